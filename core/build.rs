//! The store embeds the migrations (`sqlx::migrate!`); a new one must rebuild it.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
