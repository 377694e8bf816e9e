//! Every variable datalayer reads is documented in the three places a reader looks.

use datalayer::config::VARIABLES;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_variable_is_documented() {
    let module_doc: String = read("datalayer/src/config.rs")
        .lines()
        .filter(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let example = read(".env.example");
    let readme = read("README.md");
    for variable in VARIABLES {
        assert!(
            module_doc.contains(&format!("`{variable}`")),
            "{variable} in config.rs docs"
        );
        assert!(
            example.contains(&format!("#{variable}=")),
            "{variable} in .env.example"
        );
        assert!(
            readme.contains(&format!("`{variable}`")),
            "{variable} in README"
        );
    }
}
