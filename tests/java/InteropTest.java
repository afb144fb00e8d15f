// tests/java/InteropTest.java — SunPKCS11 interop checks for hsm-envelope.
//
// Plain javac, no build tool:
//     javac -d OUT tests/java/InteropTest.java
//     java -cp OUT InteropTest LIBRARY PIN [CONFIG]
// LIBRARY is the PKCS#11 module (libhsm_envelope.so, or libsofthsm2.so for
// the baseline), logged in with PIN. CONFIG is a SunPKCS11 configuration
// file, the README's example ("Java (SunPKCS11)"): every provider is made
// from its lines, with its `name` made unique and its `library` set to
// LIBRARY. Without it the configuration is `name`, `library` and
// `slotListIndex = 0` (the first slot with a token). scripts/interop.sh runs
// it with every JDK it finds and the README's configuration, against the
// module and against SoftHSM2 directly, on a fresh token each.
//
// Each check prints one line, "PASS name", "FAIL name: why" or
// "SKIP name: why" ("BYDESIGN name: why" for a check named in
// $INTEROP_JAVA_SKIPS); the exit status is 1 if any check failed. Ciphertexts
// are compared with the JDK's SunJCE provider where the key bytes are known
// (keys imported from a SecretKeySpec, which SunPKCS11 turns into a session
// object with C_CreateObject); keys from KeyGenerator are checked by round
// trip only, since their values need not be readable.
//
// Each check configures its own SunPKCS11 instance on the module (its own
// session pool, so checks are independent): "plain" with SunPKCS11's
// defaults (session keys, CKA_TOKEN false), or "wrapping", whose generated
// and imported AES keys also get CKA_WRAP, CKA_UNWRAP and CKA_EXTRACTABLE
// true, for the Cipher.WRAP_MODE / UNWRAP_MODE checks. SunPKCS11 in JDK 17
// has no AES/KW or AES/KWP (those checks SKIP there); JDK 25's offers them
// for a wrap/unwrap-only mechanism only with allowLegacy, set on "wrapping".

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.Key;
import java.security.KeyStore;
import java.security.Provider;
import java.security.SecureRandom;
import java.security.Security;
import java.security.spec.AlgorithmParameterSpec;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import javax.crypto.AEADBadTagException;
import javax.crypto.BadPaddingException;
import javax.crypto.Cipher;
import javax.crypto.KeyGenerator;
import javax.crypto.SecretKey;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.IvParameterSpec;
import javax.crypto.spec.SecretKeySpec;

public final class InteropTest {
    private static int failures;
    private static final SecureRandom RNG = new SecureRandom();
    private static final HexFormat HEX = HexFormat.of();

    @FunctionalInterface
    interface Check {
        /** Runs the check; returns null on success or a skip reason. */
        String run() throws Exception;
    }

    static final class Skip extends Exception {
        private static final long serialVersionUID = 1L;

        Skip(String why) {
            super(why);
        }
    }

    /** Checks skipped by design on this target: name -> reason (from scripts/interop-skips.txt). */
    private static final java.util.Map<String, String> BY_DESIGN = new java.util.HashMap<>();

    static void check(String name, Check c) {
        String why = BY_DESIGN.get(name);
        if (why != null) {
            System.out.println("BYDESIGN " + name + ": " + why);
            return;
        }
        try {
            String skip = c.run();
            if (skip == null) {
                System.out.println("PASS " + name);
            } else {
                System.out.println("SKIP " + name + ": " + skip);
            }
        } catch (Skip e) {
            System.out.println("SKIP " + name + ": " + e.getMessage());
        } catch (Throwable t) {
            failures++;
            System.out.println("FAIL " + name + ": " + describe(t));
        }
        System.out.flush();
    }

    /** The exception chain in one line (SunPKCS11 wraps the CKR_ code in a cause). */
    static String describe(Throwable t) {
        StringBuilder sb = new StringBuilder();
        for (Throwable c = t; c != null; c = c.getCause()) {
            if (sb.length() > 0) {
                sb.append(" <- ");
            }
            sb.append(c.getClass().getSimpleName());
            if (c.getMessage() != null) {
                sb.append(": ").append(c.getMessage().replace('\n', ' '));
            }
        }
        return sb.toString();
    }

    static void require(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    static void requireEqual(byte[] want, byte[] got, String what) {
        if (!Arrays.equals(want, got)) {
            throw new AssertionError(what + ": want " + hex(want) + ", got " + hex(got));
        }
    }

    static String hex(byte[] b) {
        if (b == null) {
            return "null";
        }
        String s = HEX.formatHex(b);
        return s.length() > 64 ? s.substring(0, 64) + "...(" + b.length + " bytes)" : s;
    }

    static byte[] random(int n) {
        byte[] b = new byte[n];
        RNG.nextBytes(b);
        return b;
    }

    private static String library;
    private static char[] pin;
    private static int providers;
    /** The configuration's lines other than `name` and `library`. */
    private static String baseConfig = "slotListIndex = 0\n";

    /**
     * A new SunPKCS11 instance on the module, logged in. Every check makes its
     * own, so each has its own session pool: a session a failed check left
     * with an operation active cannot fail the checks after it.
     */
    static Provider load(String extra) throws Exception {
        String name = "Interop" + (++providers);
        String cfg = "name = " + name + "\n"
                + "library = " + library + "\n"
                + baseConfig
                + extra;
        Path f = Files.createTempFile("sunpkcs11-" + name, ".cfg");
        try {
            Files.writeString(f, cfg, StandardCharsets.UTF_8);
            Provider p = Security.getProvider("SunPKCS11").configure(f.toString());
            KeyStore.getInstance("PKCS11", p).load(null, pin);
            return p;
        } finally {
            Files.delete(f);
        }
    }

    /** SunPKCS11 defaults: session keys (CKA_TOKEN false). */
    static Provider plain() throws Exception {
        return load("");
    }

    /**
     * Generated and imported AES keys can also wrap, unwrap and be wrapped.
     * allowLegacy: SunPKCS11 offers AES/KW and AES/KWP for a mechanism that
     * cannot also encrypt/decrypt only with it, and CKM_AES_KEY_WRAP(_PAD)
     * are wrap/unwrap-only on SoftHSM2.
     */
    static Provider wrapping() throws Exception {
        return load("allowLegacy = true\n"
                + "attributes(generate, CKO_SECRET_KEY, CKK_AES) = {\n"
                + "  CKA_WRAP = true\n  CKA_UNWRAP = true\n  CKA_EXTRACTABLE = true\n}\n"
                + "attributes(import, CKO_SECRET_KEY, CKK_AES) = {\n"
                + "  CKA_WRAP = true\n  CKA_UNWRAP = true\n  CKA_EXTRACTABLE = true\n}\n");
    }

    static SecretKey gen(Provider p, int bits) throws Exception {
        KeyGenerator kg = KeyGenerator.getInstance("AES", p);
        kg.init(bits);
        return kg.generateKey();
    }

    /** The transformations checked, with the data sizes they accept. */
    record Mode(String transformation, boolean blockMultipleOnly, boolean aead, boolean iv) {
        AlgorithmParameterSpec params(byte[] iv) {
            if (!this.iv) {
                return null;
            }
            return aead ? new GCMParameterSpec(128, iv) : new IvParameterSpec(iv);
        }

        int ivLen() {
            return aead ? 12 : 16;
        }
    }

    static final List<Mode> MODES = List.of(
            new Mode("AES/GCM/NoPadding", false, true, true),
            new Mode("AES/CBC/PKCS5Padding", false, false, true),
            new Mode("AES/CBC/NoPadding", true, false, true),
            new Mode("AES/ECB/NoPadding", true, false, false),
            new Mode("AES/CTR/NoPadding", false, false, true));

    static Cipher cipher(Provider p, String t) throws Exception {
        try {
            return Cipher.getInstance(t, p);
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new AssertionError(t + " not offered by " + p.getName()
                    + " (SunPKCS11 registers it only if the token lists its mechanism)", e);
        }
    }

    static void init(Cipher c, int op, Key k, AlgorithmParameterSpec ps) throws Exception {
        if (ps == null) {
            c.init(op, k);
        } else {
            c.init(op, k, ps);
        }
    }

    /** Single-part: init, AAD, doFinal. */
    static byte[] run(Cipher c, int op, Key k, AlgorithmParameterSpec ps, byte[] aad, byte[] in)
            throws Exception {
        init(c, op, k, ps);
        if (aad != null) {
            c.updateAAD(aad);
        }
        return c.doFinal(in);
    }

    /** Multi-part: init, AAD, update in chunks of `chunk` bytes, doFinal. */
    static byte[] runMulti(Cipher c, int op, Key k, AlgorithmParameterSpec ps, byte[] aad,
            byte[] in, int chunk) throws Exception {
        init(c, op, k, ps);
        if (aad != null) {
            c.updateAAD(aad);
        }
        java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
        for (int off = 0; off < in.length; off += chunk) {
            byte[] part = c.update(in, off, Math.min(chunk, in.length - off));
            if (part != null) {
                out.write(part);
            }
        }
        out.write(c.doFinal());
        return out.toByteArray();
    }

    @FunctionalInterface
    interface Action {
        void run() throws Exception;
    }

    /** What the action threw (null if it returned normally). */
    static Throwable failure(Action a) {
        try {
            a.run();
            return null;
        } catch (Throwable t) {
            return t;
        }
    }

    /**
     * A 32-byte CBC ciphertext whose last block decrypts to bad PKCS#5 padding:
     * two blocks of plaintext ending in 0x00, encrypted with padding, with the
     * padding block dropped.
     */
    static byte[] badPadding(Cipher c, Key k, byte[] iv) throws Exception {
        byte[] pt = random(32);
        pt[31] = 0;
        return Arrays.copyOf(run(c, Cipher.ENCRYPT_MODE, k, new IvParameterSpec(iv), null, pt), 32);
    }

    static String shortName(String t) {
        return t.replace("/NoPadding", "").replace("/PKCS5Padding", "-PKCS5");
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2 && args.length != 3) {
            System.err.println("usage: java -cp OUT InteropTest LIBRARY PIN [CONFIG]");
            System.exit(2);
        }
        if (args.length == 3) {
            StringBuilder b = new StringBuilder();
            for (String line : Files.readAllLines(Path.of(args[2]), StandardCharsets.UTF_8)) {
                String key = line.split("=", 2)[0].trim();
                if (!key.equals("name") && !key.equals("library")) {
                    b.append(line).append('\n');
                }
            }
            baseConfig = b.toString();
        }
        // INTEROP_JAVA_SKIPS: lines "name<TAB>reason" (scripts/interop.sh)
        String skips = System.getenv("INTEROP_JAVA_SKIPS");
        if (skips != null) {
            for (String line : skips.split("\n")) {
                String[] f = line.split("\t", 2);
                if (f.length == 2 && !f[0].isBlank()) {
                    BY_DESIGN.put(f[0].trim(), f[1].trim());
                }
            }
        }
        library = args[0];
        System.out.println("# java " + System.getProperty("java.version") + " ("
                + System.getProperty("java.vm.vendor") + "), module " + library
                + (args.length == 3 ? ", configuration " + args[2] : ""));

        pin = args[1].toCharArray();
        check("provider-load", () -> {
            plain();
            return null;
        });
        check("provider-load-wrap", () -> {
            wrapping();
            return null;
        });
        Provider jce = Security.getProvider("SunJCE");

        // --- KeyGenerator ----------------------------------------------------------
        for (int bits : new int[] {128, 256}) {
            check("keygen-aes" + bits, () -> {
                SecretKey k = gen(plain(), bits);
                require(k.getAlgorithm().equals("AES"), "algorithm " + k.getAlgorithm());
                return null;
            });
        }

        // --- the five modes: round trip with a generated key, and against SunJCE ----
        byte[] known = HEX.parseHex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
        SecretKeySpec spec = new SecretKeySpec(known, "AES");
        for (Mode m : MODES) {
            String n = shortName(m.transformation());
            int len = m.blockMultipleOnly() ? 16 * 67 : 1061;
            byte[] aad = m.aead() ? "header".getBytes(StandardCharsets.UTF_8) : null;
            for (int bits : new int[] {128, 256}) {
                check(n + "-roundtrip-aes" + bits, () -> {
                    Provider p = plain();
                    SecretKey k = gen(p, bits);
                    Cipher c = cipher(p, m.transformation());
                    byte[] pt = random(len);
                    byte[] iv = random(m.ivLen());
                    byte[] ct = run(c, Cipher.ENCRYPT_MODE, k, m.params(iv), aad, pt);
                    require(!Arrays.equals(pt, Arrays.copyOf(ct, pt.length)), "ciphertext equals plaintext");
                    byte[] back = run(c, Cipher.DECRYPT_MODE, k, m.params(iv), aad, ct);
                    requireEqual(pt, back, "decrypted");
                    // multi-part, uneven chunks, same Cipher object
                    byte[] iv2 = random(m.ivLen());
                    byte[] ct2 = runMulti(c, Cipher.ENCRYPT_MODE, k, m.params(iv2), aad, pt,
                            m.blockMultipleOnly() ? 48 : 37);
                    byte[] back2 = runMulti(c, Cipher.DECRYPT_MODE, k, m.params(iv2), aad, ct2,
                            m.blockMultipleOnly() ? 80 : 29);
                    requireEqual(pt, back2, "multi-part decrypted");
                    return null;
                });
            }
            check(n + "-vs-SunJCE", () -> {
                Cipher c = cipher(plain(), m.transformation());
                Cipher ref = Cipher.getInstance(m.transformation(), jce);
                byte[] pt = random(len);
                byte[] iv = random(m.ivLen());
                byte[] want = run(ref, Cipher.ENCRYPT_MODE, spec, m.params(iv), aad, pt);
                byte[] got = run(c, Cipher.ENCRYPT_MODE, spec, m.params(iv), aad, pt);
                requireEqual(want, got, "ciphertext vs SunJCE");
                // and SunJCE's ciphertext of other data decrypts here, multi-part
                byte[] pt2 = random(len);
                byte[] iv2 = random(m.ivLen());
                byte[] ct2 = run(ref, Cipher.ENCRYPT_MODE, spec, m.params(iv2), aad, pt2);
                byte[] back = runMulti(c, Cipher.DECRYPT_MODE, spec, m.params(iv2), aad, ct2,
                        m.blockMultipleOnly() ? 32 : 100);
                requireEqual(pt2, back, "decrypt of SunJCE ciphertext");
                return null;
            });
        }

        // --- Cipher reuse after a failed doFinal -----------------------------------------
        // Each "-reuse-" check makes doFinal fail, accepts any exception from it
        // (GCM-bad-tag-exception says whether a bad tag gives the right one; for
        // CBC padding SunPKCS11 cannot: it maps no CKR_ code to
        // BadPaddingException when the token removes the padding), then
        // initialises the same Cipher object again and expects it to work.
        for (boolean multi : new boolean[] {false, true}) {
            String suffix = multi ? "-multipart" : "";
            check("GCM-reuse-after-bad-tag" + suffix, () -> {
                Provider p = plain();
                SecretKey k = gen(p, 256);
                Cipher c = cipher(p, "AES/GCM/NoPadding");
                byte[] pt = random(100);
                byte[] iv = random(12);
                byte[] ct = run(c, Cipher.ENCRYPT_MODE, k, new GCMParameterSpec(128, iv), null, pt);
                byte[] bad = ct.clone();
                bad[multi ? 3 : bad.length - 1] ^= 1;
                Throwable t = failure(() -> {
                    if (multi) {
                        runMulti(c, Cipher.DECRYPT_MODE, k, new GCMParameterSpec(128, iv), null, bad, 33);
                    } else {
                        run(c, Cipher.DECRYPT_MODE, k, new GCMParameterSpec(128, iv), null, bad);
                    }
                });
                require(t != null, "tampered ciphertext accepted");
                requireEqual(pt, multi
                        ? runMulti(c, Cipher.DECRYPT_MODE, k, new GCMParameterSpec(128, iv), null, ct, 33)
                        : run(c, Cipher.DECRYPT_MODE, k, new GCMParameterSpec(128, iv), null, ct),
                        "decrypt after the failure (it was " + describe(t) + ")");
                byte[] iv2 = random(12);
                byte[] ct2 = run(c, Cipher.ENCRYPT_MODE, k, new GCMParameterSpec(128, iv2), null, pt);
                requireEqual(pt, run(c, Cipher.DECRYPT_MODE, k, new GCMParameterSpec(128, iv2), null, ct2),
                        "encrypt+decrypt after the failure");
                return null;
            });
        }
        check("GCM-bad-tag-exception", () -> {
            Provider p = plain();
            SecretKey k = gen(p, 256);
            Cipher c = cipher(p, "AES/GCM/NoPadding");
            byte[] iv = random(12);
            byte[] ct = run(c, Cipher.ENCRYPT_MODE, k, new GCMParameterSpec(128, iv), null, random(40));
            ct[0] ^= 1;
            Throwable t = failure(() -> run(c, Cipher.DECRYPT_MODE, k, new GCMParameterSpec(128, iv), null, ct));
            require(t instanceof AEADBadTagException, "want AEADBadTagException, got " + describe(t));
            return null;
        });
        check("CBC-PKCS5-reuse-after-bad-padding", () -> {
            Provider p = plain();
            SecretKey k = gen(p, 256);
            Cipher c = cipher(p, "AES/CBC/PKCS5Padding");
            byte[] iv = random(16);
            byte[] pt = random(40);
            byte[] ct = run(c, Cipher.ENCRYPT_MODE, k, new IvParameterSpec(iv), null, pt);
            Throwable t = failure(() -> run(c, Cipher.DECRYPT_MODE, k, new IvParameterSpec(iv), null, badPadding(c, k, iv)));
            require(t != null, "bad padding accepted");
            requireEqual(pt, run(c, Cipher.DECRYPT_MODE, k, new IvParameterSpec(iv), null, ct),
                    "decrypt after the failure (it was " + describe(t) + ")");
            return null;
        });
        check("CBC-PKCS5-reuse-after-short-ciphertext", () -> {
            Provider p = plain();
            SecretKey k = gen(p, 256);
            Cipher c = cipher(p, "AES/CBC/PKCS5Padding");
            byte[] iv = random(16);
            byte[] pt = random(40);
            byte[] ct = run(c, Cipher.ENCRYPT_MODE, k, new IvParameterSpec(iv), null, pt);
            Throwable t = failure(() -> run(c, Cipher.DECRYPT_MODE, k, new IvParameterSpec(iv), null,
                    Arrays.copyOf(ct, ct.length - 1)));
            require(t != null, "a ciphertext of 47 bytes was accepted");
            requireEqual(pt, run(c, Cipher.DECRYPT_MODE, k, new IvParameterSpec(iv), null, ct),
                    "decrypt after the failure (it was " + describe(t) + ")");
            return null;
        });

        // --- Cipher.WRAP_MODE / UNWRAP_MODE ----------------------------------------------
        String[][] wraps = {
            {"AESWrap", "AES/KW/NoPadding"},
            {"AES/KW/PKCS5Padding", "AES/KW/PKCS5Padding"},
            {"AESWrapPad", "AES/KWP/NoPadding"},
        };
        for (String[] w : wraps) {
            String alias = w[0];
            String t = w[1];
            String n = "wrap-" + t.replace('/', '-');
            check(n + "-roundtrip", () -> {
                Provider pw = wrapping();
                Cipher c;
                try {
                    c = Cipher.getInstance(t, pw);
                } catch (java.security.NoSuchAlgorithmException e) {
                    throw new Skip(t + " not offered by this JDK's SunPKCS11 for this token");
                }
                KeyGenerator kg = KeyGenerator.getInstance("AES", pw);
                kg.init(256);
                SecretKey kek = kg.generateKey();
                SecretKey dek = kg.generateKey();
                c.init(Cipher.WRAP_MODE, kek);
                byte[] wrapped = c.wrap(dek);
                int wantLen = t.endsWith("PKCS5Padding") ? 48 : 40; // 32 bytes (+ padding block) + 8
                require(wrapped.length == wantLen, "wrapped length " + wrapped.length + " (want " + wantLen + ")");
                c.init(Cipher.UNWRAP_MODE, kek);
                Key back = c.unwrap(wrapped, "AES", Cipher.SECRET_KEY);
                // the unwrapped key encrypts like the original
                Cipher g = cipher(pw, "AES/GCM/NoPadding");
                byte[] pt = random(50);
                byte[] iv = random(12);
                byte[] ct = run(g, Cipher.ENCRYPT_MODE, dek, new GCMParameterSpec(128, iv), null, pt);
                requireEqual(pt, run(g, Cipher.DECRYPT_MODE, back, new GCMParameterSpec(128, iv), null, ct),
                        "decrypt with the unwrapped key");
                return null;
            });
            check(n + "-vs-SunJCE", () -> {
                Provider pw = wrapping();
                Cipher c;
                try {
                    c = Cipher.getInstance(t, pw);
                } catch (java.security.NoSuchAlgorithmException e) {
                    throw new Skip(t + " not offered by this JDK's SunPKCS11 for this token");
                }
                Cipher ref;
                try {
                    ref = Cipher.getInstance(t, jce);
                } catch (java.security.NoSuchAlgorithmException e) {
                    ref = Cipher.getInstance(alias, jce);
                }
                byte[] kekBytes = random(32);
                byte[] dekBytes = random(24);
                SecretKeySpec kek = new SecretKeySpec(kekBytes, "AES");
                SecretKeySpec dek = new SecretKeySpec(dekBytes, "AES");
                ref.init(Cipher.WRAP_MODE, kek);
                byte[] want = ref.wrap(dek);
                c.init(Cipher.WRAP_MODE, kek);
                byte[] got = c.wrap(dek);
                requireEqual(want, got, "wrapped vs SunJCE");
                c.init(Cipher.UNWRAP_MODE, kek);
                Key back = c.unwrap(want, "AES", Cipher.SECRET_KEY);
                // check the unwrapped value by encrypting with it vs SunJCE
                Cipher g = cipher(pw, "AES/GCM/NoPadding");
                Cipher gref = Cipher.getInstance("AES/GCM/NoPadding", jce);
                byte[] pt = random(50);
                byte[] iv = random(12);
                byte[] ct = run(g, Cipher.ENCRYPT_MODE, back, new GCMParameterSpec(128, iv), null, pt);
                requireEqual(run(gref, Cipher.ENCRYPT_MODE, dek, new GCMParameterSpec(128, iv), null, pt), ct,
                        "ciphertext under the unwrapped key vs SunJCE");
                return null;
            });
        }

        System.out.println("# " + (failures == 0 ? "all checks passed" : failures + " check(s) failed"));
        System.exit(failures == 0 ? 0 : 1);
    }
}
