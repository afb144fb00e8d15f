//! The pure parts of the log format: rendering one line, parsing one line
//! back for the chain, the checkpoint message, times, hex and `CKR_` names.

use std::borrow::Cow;

use cryptoki_sys::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Op;
use crate::clock::rfc3339;
use crate::hex::{decode as unhex, encode as hex};
pub use crate::rv_name::rv_name;

/// `prev` of the first line: 64 zeros in hex.
pub(crate) const ZERO_HASH: [u8; 32] = [0; 32];

/// Labels longer than this are cut (and `label_truncated` is set).
pub(crate) const MAX_LABEL: usize = 1024;
/// Key ids longer than this are cut (PKCS#11 ids are short; ours are 16 bytes).
pub(crate) const MAX_KEY_ID: usize = 256;
/// `detail` longer than this is cut at a character boundary.
pub(crate) const MAX_DETAIL: usize = 1024;

/// The name of a checkpoint line's `op`.
pub(crate) const CHECKPOINT: &str = "checkpoint";

/// SHA-256 of a line's exact bytes, without its terminating newline.
pub(crate) fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// What a checkpoint's HMAC covers: the chain head, i.e. the sequence number
/// and SHA-256 of the line just before the checkpoint (0 and 64 zeros for an
/// empty log). Text, so an operator can reproduce it by hand:
/// `hsm-envelope-audit-v1 <seq> <hex sha-256>`.
pub fn checkpoint_message(head_seq: u64, head_hash: &[u8; 32]) -> Vec<u8> {
    format!("hsm-envelope-audit-v1 {head_seq} {}", hex(head_hash)).into_bytes()
}

/// Who wrote a line and when (the same for every line of one append).
pub(crate) struct Stamp<'a> {
    pub unix: u64,
    pub pid: u32,
    pub uid: u32,
    pub token: &'a str,
}

/// What a line says, apart from the chain fields and the [`Stamp`].
#[derive(Default)]
pub(crate) struct Body<'a> {
    pub op: &'a str,
    pub key_id: Option<&'a [u8]>,
    pub label: Option<&'a [u8]>,
    pub kek_version: Option<u32>,
    pub count: Option<u64>,
    pub since: Option<u64>,
    pub detail: Option<&'a str>,
    pub mac: Option<&'a [u8]>,
    pub result: CK_RV,
}

/// The serialised form; field order is the order on the line. `None`
/// fields are left out.
#[derive(Serialize)]
struct LineOut<'a> {
    seq: u64,
    prev: String,
    time: String,
    unix: u64,
    pid: u32,
    uid: u32,
    token: &'a str,
    op: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label_truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kek_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    result: Cow<'static, str>,
}

fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One line, without the newline. serde_json does all escaping, so labels
/// (user data) cannot break the line or the JSON: a label that is UTF-8 is
/// written as `label`, any other as `label_hex`.
pub(crate) fn render(
    seq: u64,
    prev: &[u8; 32],
    stamp: &Stamp<'_>,
    body: &Body<'_>,
) -> serde_json::Result<Vec<u8>> {
    let (mut label, mut label_hex, mut label_truncated) = (None, None, None);
    if let Some(l) = body.label {
        let cut = &l[..l.len().min(MAX_LABEL)];
        match std::str::from_utf8(cut) {
            Ok(s) => label = Some(s),
            // A cut inside a UTF-8 character: keep the valid prefix.
            Err(e) if l.len() > MAX_LABEL && e.error_len().is_none() => {
                label = std::str::from_utf8(&cut[..e.valid_up_to()]).ok()
            }
            Err(_) => label_hex = Some(hex(cut)),
        }
        if l.len() > MAX_LABEL {
            label_truncated = Some(true);
        }
    }
    let out = LineOut {
        seq,
        prev: hex(prev),
        time: rfc3339(i64::try_from(stamp.unix).unwrap_or(i64::MAX)),
        unix: stamp.unix,
        pid: stamp.pid,
        uid: stamp.uid,
        token: stamp.token,
        op: body.op,
        key_id: body.key_id.map(|k| hex(&k[..k.len().min(MAX_KEY_ID)])),
        label,
        label_hex,
        label_truncated,
        kek_version: body.kek_version,
        count: body.count,
        since: body.since,
        detail: body.detail.map(|d| cut_str(d, MAX_DETAIL)),
        mac: body.mac.map(hex),
        result: result_name(body.result),
    };
    serde_json::to_vec(&out)
}

/// The fields of a line that the chain and its checks need.
#[derive(Deserialize)]
struct LineIn {
    seq: u64,
    prev: String,
    #[allow(dead_code)]
    time: String,
    unix: u64,
    #[allow(dead_code)]
    pid: u32,
    #[allow(dead_code)]
    uid: u32,
    #[allow(dead_code)]
    token: String,
    op: String,
    #[serde(default)]
    mac: Option<String>,
    #[allow(dead_code)]
    result: String,
}

/// A line parsed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub seq: u64,
    pub prev: [u8; 32],
    pub unix: u64,
    /// Some(mac) for a checkpoint line.
    pub mac: Option<Vec<u8>>,
}

/// Parses one line (without its newline); the error says what is wrong.
pub(crate) fn parse(line: &[u8]) -> Result<Parsed, String> {
    let l: LineIn = serde_json::from_slice(line).map_err(|e| format!("not an audit line: {e}"))?;
    let prev: [u8; 32] = unhex(&l.prev)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| "`prev` is not 64 lowercase hex digits".to_string())?;
    let mac = if l.op == CHECKPOINT {
        let m = l
            .mac
            .as_deref()
            .and_then(unhex)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| "checkpoint without a hex `mac`".to_string())?;
        Some(m)
    } else {
        if Op::from_name(&l.op).is_none() {
            return Err(format!("unknown operation {:?}", l.op));
        }
        None
    };
    Ok(Parsed {
        seq: l.seq,
        prev,
        unix: l.unix,
        mac,
    })
}

/// `ok`, or the `CKR_` name of a failure.
pub(crate) fn result_name(rv: CK_RV) -> Cow<'static, str> {
    if rv == CKR_OK {
        return Cow::Borrowed("ok");
    }
    rv_name(rv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp<'static> {
        Stamp {
            unix: 1_709_251_199,
            pid: 42,
            uid: 1000,
            token: "tok",
        }
    }

    #[test]
    fn result_names() {
        assert_eq!(result_name(CKR_OK), "ok");
        assert_eq!(result_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
    }

    #[test]
    fn render_escapes_labels_and_parses_back() {
        let body = Body {
            op: Op::DekCreate.name(),
            key_id: Some(&[1, 2, 0xfe]),
            label: Some("a\"b\\c\nd\u{1}{}".as_bytes()),
            kek_version: Some(3),
            result: CKR_OK,
            ..Body::default()
        };
        let line = render(7, &[0x11; 32], &stamp(), &body).unwrap();
        assert!(!line.contains(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["label"], "a\"b\\c\nd\u{1}{}");
        assert_eq!(v["key_id"], "0102fe");
        assert_eq!(v["op"], "dek_create");
        assert_eq!(v["result"], "ok");
        assert_eq!(v["time"], "2024-02-29T23:59:59Z");
        assert!(v.get("count").is_none() && v.get("mac").is_none());
        let p = parse(&line).unwrap();
        assert_eq!((p.seq, p.prev, p.mac), (7, [0x11; 32], None));
        // Field order is fixed: the chain fields first.
        assert!(line.starts_with(b"{\"seq\":7,\"prev\":\"1111"));
    }

    #[test]
    fn non_utf8_and_long_labels() {
        let mut body = Body {
            op: Op::DekDestroy.name(),
            label: Some(&[0xff, 0x00, b'x']),
            result: CKR_KEY_HANDLE_INVALID,
            ..Body::default()
        };
        let v: serde_json::Value =
            serde_json::from_slice(&render(1, &ZERO_HASH, &stamp(), &body).unwrap()).unwrap();
        assert_eq!(v["label_hex"], "ff0078");
        assert!(v.get("label").is_none());
        assert_eq!(v["result"], "CKR_KEY_HANDLE_INVALID");

        let long = "é".repeat(MAX_LABEL); // 2 bytes each: cut inside a character
        body.label = Some(long.as_bytes());
        let v: serde_json::Value =
            serde_json::from_slice(&render(1, &ZERO_HASH, &stamp(), &body).unwrap()).unwrap();
        assert_eq!(v["label"].as_str().unwrap().len(), MAX_LABEL);
        assert_eq!(v["label_truncated"], true);
    }

    #[test]
    fn parse_rejects_bad_lines() {
        assert!(parse(b"").is_err());
        assert!(parse(b"{\"seq\":1}").is_err());
        let good = render(
            1,
            &ZERO_HASH,
            &stamp(),
            &Body {
                op: CHECKPOINT,
                mac: Some(&[9; 32]),
                ..Body::default()
            },
        )
        .unwrap();
        assert_eq!(parse(&good).unwrap().mac, Some(vec![9; 32]));
        let s = String::from_utf8(good).unwrap();
        assert!(parse(s.replace("checkpoint", "bogus").as_bytes())
            .unwrap_err()
            .contains("unknown operation"));
        let no_mac = s.replace(&format!(",\"mac\":\"{}\"", hex(&[9; 32])), "");
        assert!(parse(no_mac.as_bytes()).unwrap_err().contains("mac"));
    }

    #[test]
    fn checkpoint_message_is_text() {
        let m = checkpoint_message(12, &[0xab; 32]);
        assert_eq!(
            String::from_utf8(m).unwrap(),
            format!("hsm-envelope-audit-v1 12 {}", "ab".repeat(32))
        );
    }
}
