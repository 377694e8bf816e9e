// A new migration folder rebuilds the binary that embeds the migrations.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
