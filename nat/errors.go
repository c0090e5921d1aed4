package nat

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors, checked with errors.Is. The API maps them to HTTP status
// codes and error codes in one place (errKinds).
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

// FieldErr is a FieldError of field, its message formatted.
func FieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// errKinds are the kinds of error the API reports, each with its HTTP
// status and its stable code for scripts, in the order they are tested.
var errKinds = []struct {
	err    error
	status int
	code   string
}{
	{ErrInvalid, 400, "invalid"},
	{ErrForbidden, 403, "forbidden"},
	{ErrNotFound, 404, "not_found"},
	{ErrPortInUse, 409, "port_in_use"},
	{ErrConflict, 409, "conflict"},
	{ErrUnavailable, 503, "docker_unavailable"},
	{ErrTooLarge, 413, "too_large"},
}

// ErrStatus is how the API reports err: the HTTP status of its kind (500
// for any other).
func ErrStatus(err error) int {
	for _, k := range errKinds {
		if errors.Is(err, k.err) {
			return k.status
		}
	}
	return 500
}

// ErrCode is the stable name of err's kind in an ErrorResponse, for
// scripts: invalid, forbidden, not_found, conflict, port_in_use,
// docker_unavailable, too_large, or internal.
func ErrCode(err error) string {
	for _, k := range errKinds {
		if errors.Is(err, k.err) {
			return k.code
		}
	}
	return "internal"
}

// CodeOfStatus is the code of a reply that has a status but no code (a
// daemon from before codes): 409 is a conflict, as a held port cannot be
// told from one by the status alone.
func CodeOfStatus(status int) string {
	code := ""
	for _, k := range errKinds {
		if k.status == status {
			code = k.code // the last: conflict rather than port_in_use
		}
	}
	return code
}

// ErrorText is err's message without the sentinel's name at its end
// (": not found", ": conflict", ...): what a reply or a problem says.
func ErrorText(err error) string {
	msg := err.Error()
	for _, s := range []error{ErrInvalid, ErrNotFound, ErrConflict, ErrPortInUse, ErrUnavailable, ErrTooLarge} {
		msg = strings.TrimSuffix(msg, ": "+s.Error())
	}
	return msg
}
