//! Named points where the fault suite kills the operator, to prove that every step resumes.
//! They exist only in a build with the `failpoints` feature, never in a release: there,
//! `FAILPOINTS=shred-DestroyKey=return(sandbox) ft-operator run` aborts the process right
//! after tenant `sandbox`'s key is destroyed, before that is recorded, as a SIGKILL would at
//! the worst moment (`return` alone: for any tenant).

/// Aborts the process at this point, for `tenant`, when the `failpoints` feature is on and
/// `FAILPOINTS` names the point with `return` and that tenant or none; nothing otherwise.
#[macro_export]
macro_rules! crash_point {
    ($name:expr, $tenant:expr) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::crash_if($name, $tenant)
    };
}

/// Ends the process at once if the point is armed for `tenant`: no destructor, no lease
/// release, no last write.
#[cfg(feature = "failpoints")]
pub fn crash_if(point: &str, tenant: &str) {
    if let Some(only) = fail::eval(point, |only| only)
        && only.as_deref().is_none_or(|t| t == tenant)
    {
        eprintln!("failpoint {point}: aborting");
        std::process::abort()
    }
}

/// Reads `FAILPOINTS`; the returned guard keeps them for the life of the process.
#[cfg(feature = "failpoints")]
pub fn setup() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}
