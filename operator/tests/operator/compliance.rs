//! The compliance settings the operator loads at start-up.

#[test]
fn a_region_catalogue_of_the_platform_teams_own_replaces_the_embedded_one() {
    let own = "providers:\n  - name: onprem\n    providerIdPrefixes: []\n    csiDrivers: []\n    regions:\n      paris-dc1: FR\n";
    let compliance = ft_operator::compliance::Compliance::load(Some("onprem".into()), Some(own))
        .expect("a valid catalogue loads");
    assert_eq!(
        compliance.regions.providers().collect::<Vec<_>>(),
        ["onprem"]
    );
    // The embedded providers are gone, so --provider must name one of the file's.
    let err = ft_operator::compliance::Compliance::load(Some("aws".into()), Some(own))
        .err()
        .expect("aws is not in the file");
    assert!(err.to_string().contains("--provider aws"), "{err}");
    let err = ft_operator::compliance::Compliance::load(None, Some("providers: [{name: x}]"))
        .err()
        .expect("an invalid catalogue is refused");
    assert!(err.to_string().contains("region catalogue"), "{err}");
}
