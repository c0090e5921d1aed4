package nat

import (
	"errors"
	"fmt"
)

// Sentinel errors, checked with errors.Is. The API maps them to HTTP status
// codes in one place (statusOf).
var (
	// ErrInvalid marks bad input: the request is refused with 400.
	ErrInvalid = errors.New("invalid request")
	// ErrNotFound marks a rule that does not exist: 404.
	ErrNotFound = errors.New("not found")
	// ErrConflict marks a request that collides with another rule: 409.
	ErrConflict = errors.New("conflict")
	// ErrPortInUse marks a port another program holds: 409.
	ErrPortInUse = errors.New("port in use")
	// ErrUnavailable marks a capability the daemon cannot reach now: 503.
	ErrUnavailable = errors.New("unavailable")
	// ErrTooLarge marks a request for more than natmap takes at once: 413.
	ErrTooLarge = errors.New("too large")
)

// FieldError is bad input in one named field of a request.
type FieldError struct {
	// Field is the request field's wire name, such as "ext_ip".
	Field string
	// Msg says what is wrong with it.
	Msg string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Unwrap makes every FieldError an ErrInvalid.
func (e *FieldError) Unwrap() error { return ErrInvalid }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// ErrStatus is how the API reports err: the HTTP status of its kind.
// ErrCode is the stable name of err's kind in an ErrorResponse, for
// scripts: invalid, forbidden, not_found, conflict, port_in_use,
// docker_unavailable, too_large, or internal.
func ErrCode(err error) string {
	switch {
	case errors.Is(err, ErrInvalid):
		return "invalid"
	case errors.Is(err, ErrForbidden):
		return "forbidden"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrPortInUse):
		return "port_in_use"
	case errors.Is(err, ErrConflict):
		return "conflict"
	case errors.Is(err, ErrUnavailable):
		return "docker_unavailable"
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	}
	return "internal"
}

func ErrStatus(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return 400
	case errors.Is(err, ErrForbidden):
		return 403
	case errors.Is(err, ErrNotFound):
		return 404
	case errors.Is(err, ErrConflict), errors.Is(err, ErrPortInUse):
		return 409
	case errors.Is(err, ErrUnavailable):
		return 503
	case errors.Is(err, ErrTooLarge):
		return 413
	}
	return 500
}
