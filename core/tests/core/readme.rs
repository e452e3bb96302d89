//! The README's table of controls is the catalogue's: regenerate it with
//! `FT_UPDATE_README=1 cargo test -p ft-core --test core readme`.

use crate::common;

use ft_core::controls::Catalogue;

const BEGIN: &str = "<!-- controls:begin -->\n";
const END: &str = "<!-- controls:end -->";

#[test]
fn the_readme_lists_every_control_of_the_catalogue() {
    let path = common::repo_path("README.md");
    let readme = common::read("README.md");
    let start = readme
        .find(BEGIN)
        .expect("README has the controls:begin marker")
        + BEGIN.len();
    let end = readme
        .find(END)
        .expect("README has the controls:end marker");
    let table = Catalogue::embedded().unwrap().markdown();
    if std::env::var_os("FT_UPDATE_README").is_some() {
        let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert!(
        readme[start..end] == table,
        "README.md's table of controls is stale: run FT_UPDATE_README=1 cargo test -p ft-core --test core readme"
    );
}
