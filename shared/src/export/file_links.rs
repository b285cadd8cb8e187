//! Compact download links for manifests of many files. A presigned S3 URL is
//! ~1.5 KB, so Lambda's 6 MB response would cap a manifest of them near
//! 4,000 files; a link `[base]/$export-download/<job>/<file>?expires=<unix>&signature=<hex>`
//! is ~200 bytes. The signature is HMAC-SHA256 (first 128 bits) under the
//! job's own `download_key`, so there is no deployment-wide secret to
//! manage or leak; the route checks it and redirects (302) to a freshly
//! presigned URL of that one object, so a link expires like a presigned URL.

use hmac::{KeyInit, Mac};

/// Hex digits of the signature kept in a link.
const SIGNATURE_HEX: usize = 32;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn mac(key: &str, job_id: &str, file: &str, expires: i64) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key.as_bytes()).ok()?;
    mac.update(format!("{job_id}/{file}/{expires}").as_bytes());
    Some(mac)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The compact link of `file` of a job, valid until `expires` (unix seconds).
pub fn signed_link(
    base: &str,
    job_id: &str,
    key: &str,
    file: &str,
    expires: i64,
) -> Option<String> {
    let tag = mac(key, job_id, file, expires)?.finalize().into_bytes();
    let signature = hex(&tag[..SIGNATURE_HEX / 2]);
    Some(format!(
        "{base}/$export-download/{job_id}/{file}?expires={expires}&signature={signature}"
    ))
}

/// Whether `signature` signs `file` of the job until `expires`, and that
/// instant has not passed. Compared in constant time.
pub fn verify(
    job_id: &str,
    key: &str,
    file: &str,
    expires: i64,
    signature: &str,
    now: i64,
) -> bool {
    if key.is_empty() || expires < now || signature.len() != SIGNATURE_HEX {
        return false;
    }
    let Some(bytes) = (0..SIGNATURE_HEX / 2)
        .map(|i| u8::from_str_radix(signature.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    mac(key, job_id, file, expires).is_some_and(|m| m.verify_truncated_left(&bytes).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_verifies_until_it_expires_and_only_for_its_file_and_job() {
        let link = signed_link("https://x/fhir", "job1", "k1", "Patient.001.ndjson", 100).unwrap();
        let sig = link.rsplit("signature=").next().unwrap();
        assert_eq!(sig.len(), 32);
        assert!(verify("job1", "k1", "Patient.001.ndjson", 100, sig, 100));
        assert!(
            !verify("job1", "k1", "Patient.001.ndjson", 100, sig, 101),
            "expired"
        );
        assert!(
            !verify("job1", "k1", "Patient.002.ndjson", 100, sig, 50),
            "other file"
        );
        assert!(
            !verify("job2", "k1", "Patient.001.ndjson", 100, sig, 50),
            "other job"
        );
        assert!(
            !verify("job1", "k2", "Patient.001.ndjson", 100, sig, 50),
            "other key"
        );
        assert!(
            !verify("job1", "k1", "Patient.001.ndjson", 200, sig, 50),
            "other expiry"
        );
        assert!(
            !verify("job1", "", "Patient.001.ndjson", 100, sig, 50),
            "no key"
        );
        assert!(!verify(
            "job1",
            "k1",
            "Patient.001.ndjson",
            100,
            &sig[..30],
            50
        ));
        assert!(!verify("job1", "k1", "Patient.001.ndjson", 100, "zz", 50));
        let upper = sig.to_uppercase();
        assert!(verify("job1", "k1", "Patient.001.ndjson", 100, &upper, 50) || upper == sig);
        assert!(link.len() < 140, "{link}");
    }
}
