//! The web console. Nothing here yet; the operator API it will render is `keel-core`'s `/master/state`.
