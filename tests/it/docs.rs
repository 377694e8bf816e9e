//! Every variable datalayer reads is documented in the three places a reader looks: the
//! config module's doc, `.env.example` and the configuration reference in `docs/`.

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
    let reference = read("docs/configuration.md");
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
            reference.contains(&format!("`{variable}`")),
            "{variable} in docs/configuration.md"
        );
    }
}
