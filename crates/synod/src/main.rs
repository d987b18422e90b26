//! The `synod` command line.
fn main() {}
