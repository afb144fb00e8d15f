//! What the AWS-LC library linked into this build says of itself: whether
//! it is the FIPS module in FIPS mode, with its self-tests passed, and its
//! version (`C_Initialize`'s check and `hsm-envelope status`).

use crate::crypto::provider::ModuleState;

/// Asks the library now. In the FIPS build this runs AWS-LC's self-tests
/// again (every known-answer test; a failure there aborts the process, as
/// the FIPS module's policy requires) and reads `FIPS_mode()`.
pub fn state() -> ModuleState {
    let module = if cfg!(feature = "fips") {
        "AWS-LC FIPS"
    } else {
        "AWS-LC"
    };
    let version = format!("{module} {}", aws_lc_rs::awslc_version());
    let fips = if cfg!(feature = "fips") {
        aws_lc_rs::try_fips_self_test()
            .map_err(|_| "AWS-LC's FIPS self-tests failed".to_string())
            .and_then(|()| aws_lc_rs::try_fips_mode().map_err(|e| e.to_string()))
    } else {
        Err("not the FIPS build of AWS-LC".to_string())
    };
    ModuleState { version, fips }
}
