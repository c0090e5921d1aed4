package nat

// txn records how to undo changes to the model's maps, and which
// persisted rules they touched.
type txn struct {
	undo []func()
	// touched are the persisted rules put, replaced or dropped (see
	// persisted), for Service.delta.
	touched []any
}

// rollback undoes every recorded change, newest first.
func (t *txn) rollback() {
	for i := len(t.undo) - 1; i >= 0; i-- {
		t.undo[i]()
	}
	t.undo = nil
}

// put sets m[k] = v, recording the undo in t.
func put[K comparable, V any](t *txn, m map[K]V, k K, v V) {
	old, had := m[k]
	m[k] = v
	if persisted[V]() {
		t.touched = append(t.touched, v)
	}
	t.undo = append(t.undo, func() {
		if had {
			m[k] = old
		} else {
			delete(m, k)
		}
	})
}

// drop deletes m[k], recording the undo in t.
func drop[K comparable, V any](t *txn, m map[K]V, k K) {
	old, had := m[k]
	if !had {
		return
	}
	delete(m, k)
	if persisted[V]() {
		t.touched = append(t.touched, old)
	}
	t.undo = append(t.undo, func() { m[k] = old })
}

// persisted reports the kinds of rule the state file holds. The test is on
// a nil pointer, so nothing is boxed for the other maps (the forwards).
func persisted[V any]() bool {
	switch any((*V)(nil)).(type) {
	case *DNAT, *Hairpin, *SNAT, *Mapping:
		return true
	}
	return false
}
