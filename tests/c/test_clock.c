/*
 * tests/c/test_clock.c - calls HSME_TestAdvanceClock as include/hsm_envelope.h
 * declares it, linked against libhsm_envelope.so (not through dlsym, so the
 * declared name must be the exported one), and prints its CK_RV as
 * "0xVALUE". tests/c_header.rs runs it with and without the environment
 * variable HSM_ENVELOPE_TEST_CLOCK=1.
 */
#include <stdio.h>

#include "hsm_envelope.h"

int main(void) {
    /* The declared type, spelled out: a different declaration fails -Werror. */
    unsigned long (*advance)(unsigned long long) = HSME_TestAdvanceClock;
    unsigned long rv = advance(60000ULL);
    printf("0x%lX\n", rv);
    return 0;
}
