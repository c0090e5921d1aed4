package nat

// txn records how to undo changes to the model's maps, and which
// persisted rules they touched.
type txn struct {
	undo []func()
	// touched are the values put or replaced or dropped, of every map;
	// Service.delta keeps the persisted rules among them.
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
	t.touched = append(t.touched, v)
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
	t.touched = append(t.touched, old)
	t.undo = append(t.undo, func() { m[k] = old })
}
