/*
 * tests/c/demo.c - a plain C client of libhsm_envelope.so.
 *
 * Usage: demo /path/to/libhsm_envelope.so
 * (with SOFTHSM2_CONF and HSM_ENVELOPE_CONF set, as tests/c_header.rs does)
 *
 * Loads the module with dlopen, then: C_GetFunctionList, C_Initialize(NULL),
 * the first slot (slot 0), an RW session, C_Login with PIN "1234", a session
 * DEK from CKM_AES_KEY_GEN (32 bytes, CKA_TOKEN false), AES-GCM encryption of
 * 64 bytes with a 12-byte IV, a 16-byte tag and AAD using the two-call length
 * convention, decryption and comparison, C_GetAttributeValue(CKA_VALUE) ->
 * CKR_ATTRIBUTE_SENSITIVE, and CKA_HSME_KEK_VERSION == 1.
 * Prints "OK" and exits 0; otherwise prints the failed step with its CK_RV in
 * hex and exits 1.
 *
 * It declares the small PKCS#11 subset it needs itself (no PKCS#11 header is
 * required); the function list layout is the standard 2.40 one on Linux
 * (natural alignment, no packing).
 */
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hsm_envelope.h"

/* ---- The PKCS#11 subset used here ------------------------------------- */

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef CK_ULONG CK_FLAGS;
typedef CK_ULONG CK_SLOT_ID;
typedef CK_ULONG CK_SESSION_HANDLE;
typedef CK_ULONG CK_OBJECT_HANDLE;
typedef CK_ULONG CK_USER_TYPE;
typedef CK_ULONG CK_MECHANISM_TYPE;
typedef CK_ULONG CK_ATTRIBUTE_TYPE;
typedef CK_ULONG CK_NOTIFICATION;
typedef unsigned char CK_BYTE;
typedef unsigned char CK_BBOOL;
typedef unsigned char CK_UTF8CHAR;

typedef struct CK_VERSION {
    CK_BYTE major;
    CK_BYTE minor;
} CK_VERSION;

typedef struct CK_ATTRIBUTE {
    CK_ATTRIBUTE_TYPE type;
    void *pValue;
    CK_ULONG ulValueLen;
} CK_ATTRIBUTE;

typedef struct CK_MECHANISM {
    CK_MECHANISM_TYPE mechanism;
    void *pParameter;
    CK_ULONG ulParameterLen;
} CK_MECHANISM;

/* The layout with ulIvBits (the 2.40 header's); the module accepts both. */
typedef struct CK_GCM_PARAMS {
    CK_BYTE *pIv;
    CK_ULONG ulIvLen;
    CK_ULONG ulIvBits;
    CK_BYTE *pAAD;
    CK_ULONG ulAADLen;
    CK_ULONG ulTagBits;
} CK_GCM_PARAMS;

typedef CK_RV (*CK_NOTIFY)(CK_SESSION_HANDLE, CK_NOTIFICATION, void *);

#define CKR_OK 0x00UL
#define CKR_ATTRIBUTE_SENSITIVE 0x11UL
#define CKF_RW_SESSION 0x02UL
#define CKF_SERIAL_SESSION 0x04UL
#define CKU_USER 1UL
#define CKO_SECRET_KEY 0x04UL
#define CKK_AES 0x1FUL
#define CKA_CLASS 0x000UL
#define CKA_TOKEN 0x001UL
#define CKA_VALUE 0x011UL
#define CKA_KEY_TYPE 0x100UL
#define CKA_VALUE_LEN 0x161UL
#define CKM_AES_KEY_GEN 0x1080UL
#define CKM_AES_GCM 0x1087UL
#define CK_UNAVAILABLE_INFORMATION (~0UL)

/* An entry of the list this program never calls; only its size matters. */
typedef void (*ck_unused_fn)(void);

/* CK_FUNCTION_LIST (PKCS#11 2.40), all 68 entries in order. */
typedef struct CK_FUNCTION_LIST {
    CK_VERSION version;
    CK_RV (*C_Initialize)(void *pInitArgs);
    CK_RV (*C_Finalize)(void *pReserved);
    ck_unused_fn C_GetInfo;
    ck_unused_fn C_GetFunctionList;
    CK_RV (*C_GetSlotList)(CK_BBOOL tokenPresent, CK_SLOT_ID *pSlotList, CK_ULONG *pulCount);
    ck_unused_fn C_GetSlotInfo;
    ck_unused_fn C_GetTokenInfo;
    ck_unused_fn C_GetMechanismList;
    ck_unused_fn C_GetMechanismInfo;
    ck_unused_fn C_InitToken;
    ck_unused_fn C_InitPIN;
    ck_unused_fn C_SetPIN;
    CK_RV (*C_OpenSession)(CK_SLOT_ID slotID, CK_FLAGS flags, void *pApplication, CK_NOTIFY Notify,
                           CK_SESSION_HANDLE *phSession);
    CK_RV (*C_CloseSession)(CK_SESSION_HANDLE hSession);
    ck_unused_fn C_CloseAllSessions;
    ck_unused_fn C_GetSessionInfo;
    ck_unused_fn C_GetOperationState;
    ck_unused_fn C_SetOperationState;
    CK_RV (*C_Login)(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR *pPin, CK_ULONG ulPinLen);
    CK_RV (*C_Logout)(CK_SESSION_HANDLE hSession);
    ck_unused_fn C_CreateObject;
    ck_unused_fn C_CopyObject;
    ck_unused_fn C_DestroyObject;
    ck_unused_fn C_GetObjectSize;
    CK_RV (*C_GetAttributeValue)(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE *pTemplate,
                                 CK_ULONG ulCount);
    ck_unused_fn C_SetAttributeValue;
    ck_unused_fn C_FindObjectsInit;
    ck_unused_fn C_FindObjects;
    ck_unused_fn C_FindObjectsFinal;
    CK_RV (*C_EncryptInit)(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey);
    CK_RV (*C_Encrypt)(CK_SESSION_HANDLE hSession, CK_BYTE *pData, CK_ULONG ulDataLen, CK_BYTE *pEncryptedData,
                       CK_ULONG *pulEncryptedDataLen);
    ck_unused_fn C_EncryptUpdate;
    ck_unused_fn C_EncryptFinal;
    CK_RV (*C_DecryptInit)(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey);
    CK_RV (*C_Decrypt)(CK_SESSION_HANDLE hSession, CK_BYTE *pEncryptedData, CK_ULONG ulEncryptedDataLen,
                       CK_BYTE *pData, CK_ULONG *pulDataLen);
    ck_unused_fn C_DecryptUpdate;
    ck_unused_fn C_DecryptFinal;
    ck_unused_fn C_DigestInit;
    ck_unused_fn C_Digest;
    ck_unused_fn C_DigestUpdate;
    ck_unused_fn C_DigestKey;
    ck_unused_fn C_DigestFinal;
    ck_unused_fn C_SignInit;
    ck_unused_fn C_Sign;
    ck_unused_fn C_SignUpdate;
    ck_unused_fn C_SignFinal;
    ck_unused_fn C_SignRecoverInit;
    ck_unused_fn C_SignRecover;
    ck_unused_fn C_VerifyInit;
    ck_unused_fn C_Verify;
    ck_unused_fn C_VerifyUpdate;
    ck_unused_fn C_VerifyFinal;
    ck_unused_fn C_VerifyRecoverInit;
    ck_unused_fn C_VerifyRecover;
    ck_unused_fn C_DigestEncryptUpdate;
    ck_unused_fn C_DecryptDigestUpdate;
    ck_unused_fn C_SignEncryptUpdate;
    ck_unused_fn C_DecryptVerifyUpdate;
    CK_RV (*C_GenerateKey)(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_ATTRIBUTE *pTemplate,
                           CK_ULONG ulCount, CK_OBJECT_HANDLE *phKey);
    ck_unused_fn C_GenerateKeyPair;
    ck_unused_fn C_WrapKey;
    ck_unused_fn C_UnwrapKey;
    ck_unused_fn C_DeriveKey;
    ck_unused_fn C_SeedRandom;
    ck_unused_fn C_GenerateRandom;
    ck_unused_fn C_GetFunctionStatus;
    ck_unused_fn C_CancelFunction;
    ck_unused_fn C_WaitForSlotEvent;
} CK_FUNCTION_LIST;

typedef CK_RV (*CK_C_GetFunctionList)(CK_FUNCTION_LIST **ppFunctionList);

/* C99 has no static_assert: a negative array size stops the build instead. */
#define FN_SLOT(i) (offsetof(CK_FUNCTION_LIST, C_Initialize) + (i) * sizeof(ck_unused_fn))
typedef char layout_check_generate_key[offsetof(CK_FUNCTION_LIST, C_GenerateKey) == FN_SLOT(58) ? 1 : -1];
typedef char layout_check_size[sizeof(CK_FUNCTION_LIST) == FN_SLOT(68) ? 1 : -1];

/* ---- The demo ----------------------------------------------------------- */

static int fail(const char *step, CK_RV rv) {
    printf("FAIL: %s: CK_RV 0x%lX\n", step, rv);
    return 1;
}

/* A check that is not about a return value: prints the value it saw. */
static int fail_val(const char *step, CK_ULONG value) {
    printf("FAIL: %s (got %lu = 0x%lX)\n", step, value, value);
    return 1;
}

#define CHECK(step, call)                                                                                              \
    do {                                                                                                               \
        CK_RV rv_ = (call);                                                                                            \
        if (rv_ != CKR_OK)                                                                                             \
            return fail(step, rv_);                                                                                    \
    } while (0)

static int run(CK_FUNCTION_LIST *p11) {
    CK_SLOT_ID slots[16];
    CK_ULONG slot_count = sizeof slots / sizeof slots[0];
    CK_SESSION_HANDLE session = 0;
    CK_OBJECT_HANDLE dek = 0;
    CK_UTF8CHAR pin[] = "1234";
    CK_ULONG value_len = 32;
    CK_BBOOL no = 0;
    CK_MECHANISM keygen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE template[2];
    CK_BYTE iv[12];
    CK_BYTE aad[] = "hsm-envelope C demo AAD";
    CK_GCM_PARAMS gcm;
    CK_MECHANISM gcm_mech;
    CK_BYTE plain[64];
    CK_BYTE *cipher = NULL;
    CK_BYTE decrypted[64 + 16];
    CK_ULONG cipher_len = 0, cipher_cap = 0, plain_len = 0;
    CK_BYTE value[32];
    CK_ULONG kek_version = 0;
    CK_ATTRIBUTE attr;
    CK_RV rv;
    size_t i;

    template[0].type = CKA_VALUE_LEN;
    template[0].pValue = &value_len;
    template[0].ulValueLen = sizeof value_len;
    template[1].type = CKA_TOKEN;
    template[1].pValue = &no;
    template[1].ulValueLen = sizeof no;
    for (i = 0; i < sizeof iv; i++)
        iv[i] = (CK_BYTE)(0xA0 + i);
    for (i = 0; i < sizeof plain; i++)
        plain[i] = (CK_BYTE)(i * 7 + 3);
    memset(&gcm, 0, sizeof gcm);
    gcm.pIv = iv;
    gcm.ulIvLen = sizeof iv;
    gcm.ulIvBits = 8 * sizeof iv;
    gcm.pAAD = aad;
    gcm.ulAADLen = sizeof aad - 1;
    gcm.ulTagBits = 128;
    gcm_mech.mechanism = CKM_AES_GCM;
    gcm_mech.pParameter = &gcm;
    gcm_mech.ulParameterLen = sizeof gcm;

    CHECK("C_Initialize", p11->C_Initialize(NULL));
    CHECK("C_GetSlotList", p11->C_GetSlotList(1, slots, &slot_count));
    if (slot_count < 1 || slots[0] != 0)
        return fail_val("C_GetSlotList: slot 0 not listed first", slot_count);
    CHECK("C_OpenSession", p11->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &session));
    CHECK("C_Login", p11->C_Login(session, CKU_USER, pin, (CK_ULONG)strlen((const char *)pin)));
    CHECK("C_GenerateKey", p11->C_GenerateKey(session, &keygen, template, 2, &dek));

    /* Encrypt: length query first (NULL output), then the real call. */
    CHECK("C_EncryptInit", p11->C_EncryptInit(session, &gcm_mech, dek));
    CHECK("C_Encrypt (length query)", p11->C_Encrypt(session, plain, sizeof plain, NULL, &cipher_len));
    if (cipher_len != sizeof plain + 16)
        return fail_val("C_Encrypt (length query): unexpected length", cipher_len);
    cipher_cap = cipher_len;
    cipher = malloc(cipher_cap);
    if (cipher == NULL)
        return fail_val("malloc failed", 0);
    rv = p11->C_Encrypt(session, plain, sizeof plain, cipher, &cipher_len);
    if (rv != CKR_OK) {
        free(cipher);
        return fail("C_Encrypt", rv);
    }
    if (cipher_len != cipher_cap || memcmp(cipher, plain, sizeof plain) == 0) {
        free(cipher);
        return fail_val("C_Encrypt: unexpected output", cipher_len);
    }

    /* Decrypt the same way and compare. */
    rv = p11->C_DecryptInit(session, &gcm_mech, dek);
    if (rv == CKR_OK)
        rv = p11->C_Decrypt(session, cipher, cipher_len, NULL, &plain_len);
    if (rv != CKR_OK) {
        free(cipher);
        return fail("C_DecryptInit / C_Decrypt (length query)", rv);
    }
    if (plain_len < sizeof plain || plain_len > sizeof decrypted) {
        free(cipher);
        return fail_val("C_Decrypt (length query): unexpected length", plain_len);
    }
    rv = p11->C_Decrypt(session, cipher, cipher_len, decrypted, &plain_len);
    free(cipher);
    if (rv != CKR_OK)
        return fail("C_Decrypt", rv);
    if (plain_len != sizeof plain || memcmp(decrypted, plain, sizeof plain) != 0)
        return fail_val("C_Decrypt: plaintext differs", plain_len);

    /* The DEK is sensitive: its value must not come out. */
    memset(value, 0x5A, sizeof value);
    attr.type = CKA_VALUE;
    attr.pValue = value;
    attr.ulValueLen = sizeof value;
    rv = p11->C_GetAttributeValue(session, dek, &attr, 1);
    if (rv != CKR_ATTRIBUTE_SENSITIVE)
        return fail("C_GetAttributeValue(CKA_VALUE): expected CKR_ATTRIBUTE_SENSITIVE", rv);
    if (attr.ulValueLen != CK_UNAVAILABLE_INFORMATION)
        return fail_val("C_GetAttributeValue(CKA_VALUE): ulValueLen not CK_UNAVAILABLE_INFORMATION", attr.ulValueLen);
    for (i = 0; i < sizeof value; i++)
        if (value[i] != 0x5A)
            return fail_val("C_GetAttributeValue(CKA_VALUE): buffer was written", (CK_ULONG)i);

    /* The vendor attribute from hsm_envelope.h. */
    attr.type = CKA_HSME_KEK_VERSION;
    attr.pValue = &kek_version;
    attr.ulValueLen = sizeof kek_version;
    CHECK("C_GetAttributeValue(CKA_HSME_KEK_VERSION)", p11->C_GetAttributeValue(session, dek, &attr, 1));
    if (attr.ulValueLen != sizeof kek_version || kek_version != 1)
        return fail_val("CKA_HSME_KEK_VERSION: expected 1", kek_version);

    CHECK("C_Logout", p11->C_Logout(session));
    CHECK("C_CloseSession", p11->C_CloseSession(session));
    CHECK("C_Finalize", p11->C_Finalize(NULL));
    return 0;
}

int main(int argc, char **argv) {
    void *lib;
    void *sym;
    CK_C_GetFunctionList get_list;
    CK_FUNCTION_LIST *p11 = NULL;
    CK_RV rv;
    int status;

    if (argc != 2) {
        fprintf(stderr, "usage: %s /path/to/libhsm_envelope.so\n", argv[0]);
        return 2;
    }
    lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        printf("FAIL: dlopen: %s\n", dlerror());
        return 1;
    }
    sym = dlsym(lib, "C_GetFunctionList");
    if (sym == NULL) {
        printf("FAIL: dlsym(C_GetFunctionList): %s\n", dlerror());
        return 1;
    }
    /* ISO C has no object-to-function pointer cast; POSIX guarantees this. */
    memcpy(&get_list, &sym, sizeof get_list);
    rv = get_list(&p11);
    if (rv != CKR_OK || p11 == NULL)
        return fail("C_GetFunctionList", rv);
    if (p11->version.major != 2)
        return fail_val("C_GetFunctionList: not a 2.x list", p11->version.major);
    status = run(p11);
    if (status == 0)
        printf("OK\n");
    /* Not dlclose'd: a module's threads or destructors may outlive us. */
    return status;
}
