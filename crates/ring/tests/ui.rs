//! Compile-fail tests: safe code cannot touch a buffer the kernel owns, and the ring's types are
//! not `Send`/`Sync`.

#[test]
fn compile_fail() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
