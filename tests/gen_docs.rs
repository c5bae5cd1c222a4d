//! The man pages and completions `cargo run --example gen_docs -- DIR`
//! writes: a page for each binary and subcommand, naming every flag, and
//! completion scripts for bash, zsh and fish that know the flags.

#[allow(dead_code)]
#[path = "../examples/gen_docs.rs"]
mod gen_docs;

#[test]
fn every_binary_gets_a_man_page_naming_each_flag_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    gen_docs::generate(dir.path()).unwrap();
    for (name, command) in gen_docs::commands() {
        let page = std::fs::read_to_string(dir.path().join(format!("man/{name}.1"))).unwrap();
        assert!(page.contains(&format!(".TH {name}")), "{name}.1: {page}");
        for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                // roff writes each dash of a flag escaped.
                let flag = format!("\\-\\-{}", long.replace('-', "\\-"));
                assert!(page.contains(&flag), "{name}.1 does not name --{long}");
            }
        }
        for sub in command.get_subcommands() {
            let path = dir.path().join(format!("man/{name}-{}.1", sub.get_name()));
            assert!(path.exists(), "no page for {name} {}", sub.get_name());
        }
        let bash =
            std::fs::read_to_string(dir.path().join(format!("completions/{name}.bash"))).unwrap();
        assert!(
            bash.contains(&format!("complete -F _{name}")),
            "{name}.bash"
        );
        let zsh = std::fs::read_to_string(dir.path().join(format!("completions/_{name}"))).unwrap();
        assert!(zsh.contains(&format!("#compdef {name}")), "_{name}");
        let fish =
            std::fs::read_to_string(dir.path().join(format!("completions/{name}.fish"))).unwrap();
        assert!(fish.contains(&format!("complete -c {name}")), "{name}.fish");
    }
}
