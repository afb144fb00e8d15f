/*
 * hsm_envelope.h - vendor-defined constants of the hsm-envelope PKCS#11
 * module (libhsm_envelope.so), for C callers.
 *
 * hsm-envelope is a PKCS#11 module that sits in front of a backend HSM: the
 * key-encryption keys (KEKs) stay on the HSM, the data-encryption keys (DEKs)
 * are wrapped by a KEK on the HSM and used for AES in software. Most callers
 * need nothing beyond the standard PKCS#11 API; this header only adds the
 * module's own return codes and attribute types, and declares one test-only
 * function (HSME_TestAdvanceClock, at the end).
 *
 * This header does not include, and does not require, a PKCS#11 header: it
 * defines only its own names, as plain unsigned long constants. Use them
 * where PKCS#11 expects
 *   - CKR_HSME_*: a CK_RV value (returned by the module's functions);
 *   - CKA_HSME_*: a CK_ATTRIBUTE_TYPE value (the `type` of a CK_ATTRIBUTE).
 * Both CK_RV and CK_ATTRIBUTE_TYPE are CK_ULONG, i.e. unsigned long.
 *
 * Every value is CKR_VENDOR_DEFINED / CKA_VENDOR_DEFINED (0x80000000UL)
 * OR-ed with the prefix 0x48450000UL ("HE", for hsm-envelope) and a small
 * number, so the values are easy to recognise in logs and unlikely to clash
 * with other vendors' codes. They mirror src/vendor.rs exactly; the
 * hexadecimal value of each is given in its comment.
 */
#ifndef HSM_ENVELOPE_H
#define HSM_ENVELOPE_H

/* CKR_VENDOR_DEFINED and CKA_VENDOR_DEFINED of the PKCS#11 specification. */
#define HSME_VENDOR_DEFINED 0x80000000UL
/* "HE" (0x48 0x45): the prefix of every hsm-envelope vendor value. */
#define HSME_VENDOR_PREFIX 0x48450000UL

/* ---- Return values (CK_RV) ------------------------------------------- */

/*
 * The KEK needed for this DEK is not usable on the backend (absent, or the
 * user is not logged in to the backend token).
 * Value 0xC8450001UL.
 */
#define CKR_HSME_KEK_UNAVAILABLE (HSME_VENDOR_DEFINED | HSME_VENDOR_PREFIX | 0x01UL)

/*
 * A stored wrapped-DEK record failed to parse or to authenticate: it was
 * altered, or moved onto another key's row.
 * Value 0xC8450002UL.
 */
#define CKR_HSME_RECORD_INVALID (HSME_VENDOR_DEFINED | HSME_VENDOR_PREFIX | 0x02UL)

/*
 * The wrapped-DEK store could not be read or written.
 * Value 0xC8450003UL.
 */
#define CKR_HSME_STORE_ERROR (HSME_VENDOR_DEFINED | HSME_VENDOR_PREFIX | 0x03UL)

/*
 * The KEK version this DEK needs was deleted or disabled on the HSM
 * (CKA_DECRYPT or CKA_UNWRAP turned off): the DEK is revoked.
 * Value 0xC8450004UL.
 */
#define CKR_HSME_KEK_REVOKED (HSME_VENDOR_DEFINED | HSME_VENDOR_PREFIX | 0x04UL)

/*
 * The HSM cannot be reached (device error, token gone, sessions lost) and
 * the DEK is not cached, or its grace period (cache_hard_ttl_secs) is over.
 * Value 0xC8450005UL.
 */
#define CKR_HSME_HSM_UNAVAILABLE (HSME_VENDOR_DEFINED | HSME_VENDOR_PREFIX | 0x05UL)

/*
 * The key's AES-GCM invocation limit (gcm_invocation_limit in the
 * configuration) is reached: no further GCM encryption under this key
 * material, through any function; decryption still works. Rotate to a new
 * DEK.
 * Value 0xC8450006UL.
 */
#define CKR_HSME_INVOCATION_LIMIT (HSME_VENDOR_DEFINED | HSME_VENDOR_PREFIX | 0x06UL)

/* ---- Attribute types (CK_ATTRIBUTE_TYPE) ------------------------------ */

/*
 * CK_ULONG, read-only: the KEK version a token DEK is wrapped under.
 * Value 0xC8450001UL.
 */
#define CKA_HSME_KEK_VERSION (HSME_VENDOR_DEFINED | HSME_VENDOR_PREFIX | 0x01UL)

/*
 * CK_BBOOL, template-only: in C_GenerateKey / C_CreateObject / C_UnwrapKey,
 * CK_TRUE makes the key a plain backend object instead of a DEK.
 * Value 0xC8450002UL.
 */
#define CKA_HSME_ON_BACKEND (HSME_VENDOR_DEFINED | HSME_VENDOR_PREFIX | 0x02UL)

/* ---- Test-only vendor function --------------------------------------- */

/*
 * FOR TESTS ONLY: moves the module's clock forward by `ms` milliseconds, so
 * that a test of a TTL or interval (cache_soft_ttl_secs, cache_hard_ttl_secs,
 * refresh_secs, rotation age, audit intervals) need not sleep through it.
 * Both the wall clock the module stores and shows times by and the monotonic
 * clock its TTLs run on move, for this process only.
 *
 * It works only in a process started with the environment variable
 * HSM_ENVELOPE_TEST_CLOCK=1 (read once, at the module's first use of its
 * clock): then it returns CKR_OK (0x00000000UL). Otherwise it changes nothing
 * and returns CKR_FUNCTION_NOT_SUPPORTED (0x00000054UL). Never set
 * HSM_ENVELOPE_TEST_CLOCK in production. C_Initialize is not needed first.
 *
 * The function is exported by libhsm_envelope.so but is not in any PKCS#11
 * function list: look it up with dlsym(handle, "HSME_TestAdvanceClock"). To
 * start another process (such as the admin tool hsm-envelope) with its clock
 * already moved, give it HSM_ENVELOPE_TEST_CLOCK=1 and
 * HSM_ENVELOPE_TEST_CLOCK_OFFSET_MS=<milliseconds> in its environment.
 *
 * The return value is a CK_RV; `ms` is a 64-bit unsigned integer.
 */
unsigned long HSME_TestAdvanceClock(unsigned long long ms);

#endif /* HSM_ENVELOPE_H */
