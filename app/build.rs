//! The migrations are embedded at compile time from the top-level `migrations/` folder; adding or editing a
//! file there must rebuild the crate, which cargo does not notice on its own.

fn main() {
    println!("cargo::rerun-if-changed=../migrations");
}
