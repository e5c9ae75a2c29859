//! A plain WASI command: a component of the `wasi:cli/command` world.
fn main() {
    println!("I am not a plugin");
}
