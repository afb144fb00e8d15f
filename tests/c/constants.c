/*
 * tests/c/constants.c - prints the vendor constants of include/hsm_envelope.h,
 * one "NAME 0xVALUE" line each, for tests/c_header.rs to compare with
 * src/vendor.rs. Includes the header twice (the include guard must hold) and
 * no PKCS#11 header (the header must not need one).
 */
#include <stdio.h>

#include "hsm_envelope.h"
#include "hsm_envelope.h"

/* Each constant must be an unsigned long (CK_RV / CK_ATTRIBUTE_TYPE are
 * CK_ULONG): same size, and unsigned. C99 has no static_assert, so a
 * negative array size stops the build instead. */
#define IS_ULONG(c) (sizeof(c) == sizeof(unsigned long) && (c) - (c) - 1 > 0)
typedef char check_kek_unavailable[IS_ULONG(CKR_HSME_KEK_UNAVAILABLE) ? 1 : -1];
typedef char check_record_invalid[IS_ULONG(CKR_HSME_RECORD_INVALID) ? 1 : -1];
typedef char check_store_error[IS_ULONG(CKR_HSME_STORE_ERROR) ? 1 : -1];
typedef char check_kek_revoked[IS_ULONG(CKR_HSME_KEK_REVOKED) ? 1 : -1];
typedef char check_hsm_unavailable[IS_ULONG(CKR_HSME_HSM_UNAVAILABLE) ? 1 : -1];
typedef char check_invocation_limit[IS_ULONG(CKR_HSME_INVOCATION_LIMIT) ? 1 : -1];
typedef char check_kek_version[IS_ULONG(CKA_HSME_KEK_VERSION) ? 1 : -1];
typedef char check_on_backend[IS_ULONG(CKA_HSME_ON_BACKEND) ? 1 : -1];

/* Usable in #if as well (plain integer constant expressions). */
#if !(CKR_HSME_KEK_UNAVAILABLE && CKR_HSME_RECORD_INVALID && CKR_HSME_STORE_ERROR && CKR_HSME_KEK_REVOKED &&         \
      CKR_HSME_HSM_UNAVAILABLE && CKR_HSME_INVOCATION_LIMIT && CKA_HSME_KEK_VERSION && CKA_HSME_ON_BACKEND)
#error "hsm_envelope.h constants are not preprocessor constants"
#endif

#define PRINT(c) printf("%s 0x%lX\n", #c, (unsigned long)(c))

int main(void) {
    PRINT(CKR_HSME_KEK_UNAVAILABLE);
    PRINT(CKR_HSME_RECORD_INVALID);
    PRINT(CKR_HSME_STORE_ERROR);
    PRINT(CKR_HSME_KEK_REVOKED);
    PRINT(CKR_HSME_HSM_UNAVAILABLE);
    PRINT(CKR_HSME_INVOCATION_LIMIT);
    PRINT(CKA_HSME_KEK_VERSION);
    PRINT(CKA_HSME_ON_BACKEND);
    return 0;
}
