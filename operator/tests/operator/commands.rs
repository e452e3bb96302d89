//! The command line: what `ft-operator crd` prints.

use crate::common::repo_path;
use ft_core::crd;

#[test]
fn the_crd_command_prints_the_committed_files_concatenated() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ft-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(output.status.success());
    let concatenated: String = crd::crd_files()
        .unwrap()
        .into_iter()
        .map(|(name, _)| std::fs::read_to_string(repo_path("crds").join(name)).unwrap())
        .collect();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), concatenated);
}
