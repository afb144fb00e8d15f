//! `HSME_TestAdvanceClock`: the module's one vendor function, for tests only
//! (declared in `include/hsm_envelope.h`). It moves the module clock (see
//! `crate::clock`) forward, so a test of a TTL, refresh interval or rotation
//! age need not sleep for it. Not in any PKCS#11 function list: callers look
//! it up by name (dlsym).

use std::time::Duration;

use cryptoki_sys::*;

use super::args::guard;

/// Moves the module clock forward by `ms` milliseconds: CKR_OK. In a process
/// not started with `HSM_ENVELOPE_TEST_CLOCK=1` it moves nothing and answers
/// CKR_FUNCTION_NOT_SUPPORTED. Needs no C_Initialize.
#[no_mangle]
pub extern "C" fn HSME_TestAdvanceClock(ms: u64) -> CK_RV {
    guard("HSME_TestAdvanceClock", || {
        Ok(if crate::clock::advance(Duration::from_millis(ms)) {
            CKR_OK
        } else {
            CKR_FUNCTION_NOT_SUPPORTED
        })
    })
}
