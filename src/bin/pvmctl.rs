//! `pvmctl`: placeholder, replaced by the operator tool.
fn main() {}
