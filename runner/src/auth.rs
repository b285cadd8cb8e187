//! Bearer-token (JWT) authentication for the runner's HTTP server: HS256 with
//! a shared secret and/or RS256/RS384/ES256/ES384 with keys from a JWKS file.

use crate::http_server::Authenticator;
use bulk_export_core::fhir::outcome::ApiError;
use bulk_export_core::model::Caller;
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Clock skew tolerated for `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Longest bearer token accepted, in bytes.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Algorithms accepted for keys from the JWKS.
const JWKS_ALGS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// How bearer tokens are verified; neither key source set means auth is off.
#[derive(Clone)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens.
    pub hs256_secret: Option<String>,
    /// Parsed JWKS document (`{"keys": [...]}`) with the public keys of RS/ES tokens.
    pub jwks: Option<Value>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim (one of its values), when set.
    pub audience: Option<String>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwks", &self.jwks.as_ref().map(|_| "<jwks>"))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// The authentication settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// `--auth-hs256-secret` is set but empty.
    #[error("the HS256 secret is empty")]
    EmptySecret,
    /// The JWKS file could not be read.
    #[error("cannot read JWKS file {}: {source}", path.display())]
    ReadJwks {
        /// The JWKS file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The JWKS file is not JSON.
    #[error("JWKS file {} is not valid JSON: {source}", path.display())]
    JwksNotJson {
        /// The JWKS file.
        path: PathBuf,
        /// Why it did not parse.
        source: serde_json::Error,
    },
    /// The JWKS document has no `keys` array.
    #[error("JWKS file {}: JWKS has no \"keys\" array", path.display())]
    NoKeysArray {
        /// The JWKS file.
        path: PathBuf,
    },
    /// No key of the JWKS is a signing key of an accepted algorithm.
    #[error("JWKS file {} has no usable RS256/RS384/ES256/ES384 signing key", path.display())]
    NoUsableKey {
        /// The JWKS file.
        path: PathBuf,
    },
}

impl AuthConfig {
    /// Builds the config, reading and checking the JWKS file if one is given.
    pub fn from_files(
        hs256_secret: Option<String>,
        jwks_file: Option<&Path>,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Self, AuthError> {
        if hs256_secret.as_deref().is_some_and(str::is_empty) {
            return Err(AuthError::EmptySecret);
        }
        let jwks = jwks_file.map(read_jwks).transpose()?;
        Ok(Self {
            hs256_secret,
            jwks,
            issuer: issuer.filter(|s| !s.is_empty()),
            audience: audience.filter(|s| !s.is_empty()),
        })
    }

    /// Whether any key source is configured, i.e. requests must carry a token.
    pub fn is_enabled(&self) -> bool {
        self.hs256_secret.is_some() || self.jwks.is_some()
    }
}

/// Reads a JWKS file and checks that it holds at least one usable key;
/// warns about the keys it will ignore.
fn read_jwks(path: &Path) -> Result<Value, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::ReadJwks {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|source| AuthError::JwksNotJson {
        path: path.to_path_buf(),
        source,
    })?;
    let (keys, skipped) = jwks_keys(&value).ok_or_else(|| AuthError::NoKeysArray {
        path: path.to_path_buf(),
    })?;
    if keys.is_empty() {
        return Err(AuthError::NoUsableKey {
            path: path.to_path_buf(),
        });
    }
    if skipped > 0 {
        tracing::warn!(
            path = %path.display(),
            skipped,
            "ignoring JWKS keys that are not usable RS256/RS384/ES256/ES384 signing keys"
        );
    }
    Ok(value)
}

/// An authenticator that requires `Authorization: Bearer <JWT>` on every request.
pub fn jwt_authenticator(cfg: AuthConfig) -> Authenticator {
    let verifier = Verifier::new(&cfg);
    Arc::new(move |parts| {
        let token = bearer_token(parts)?;
        verifier.verify(token)
    })
}

/// One usable public key from the JWKS.
struct JwksKey {
    kid: Option<String>,
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

/// The usable keys of a JWKS document, and how many entries were skipped;
/// `None` when it has no `keys` array.
fn jwks_keys(jwks: &Value) -> Option<(Vec<JwksKey>, usize)> {
    let entries = jwks.get("keys").and_then(Value::as_array)?;
    let mut keys = Vec::new();
    for entry in entries {
        // Entries are parsed one by one so that one key of an unsupported
        // type does not make the whole set unusable.
        if let Some(key) = serde_json::from_value::<Jwk>(entry.clone())
            .ok()
            .and_then(|jwk| usable_key(&jwk))
        {
            keys.push(key);
        }
    }
    let skipped = entries.len() - keys.len();
    Some((keys, skipped))
}

/// Turns a JWK into a verification key, if it is a signing key we accept.
fn usable_key(jwk: &Jwk) -> Option<JwksKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let declared = jwk.common.key_algorithm;
    let algs = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => match declared {
            None => vec![Algorithm::RS256, Algorithm::RS384],
            Some(KeyAlgorithm::RS256) => vec![Algorithm::RS256],
            Some(KeyAlgorithm::RS384) => vec![Algorithm::RS384],
            Some(_) => return None,
        },
        AlgorithmParameters::EllipticCurve(ec) => {
            let (alg, key_alg) = match ec.curve {
                EllipticCurve::P256 => (Algorithm::ES256, KeyAlgorithm::ES256),
                EllipticCurve::P384 => (Algorithm::ES384, KeyAlgorithm::ES384),
                _ => return None,
            };
            if declared.is_some_and(|d| d != key_alg) {
                return None;
            }
            vec![alg]
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(JwksKey {
        kid: jwk.common.key_id.clone(),
        algs,
        key,
    })
}

/// The claims we read ourselves; `exp`, `nbf`, `iss`, `aud` are checked by
/// jsonwebtoken's `Validation`.
#[derive(Deserialize)]
struct Claims {
    client_id: Option<Value>,
    sub: Option<Value>,
    scope: Option<Value>,
    nbf: Option<Value>,
}

/// Verifies tokens against the configured keys and claims.
struct Verifier {
    secret: Option<DecodingKey>,
    jwks: Vec<JwksKey>,
    validation: Validation,
}

impl Verifier {
    fn new(cfg: &AuthConfig) -> Self {
        let secret = cfg
            .hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let jwks = cfg
            .jwks
            .as_ref()
            .and_then(jwks_keys)
            .map(|(keys, _)| keys)
            .unwrap_or_default();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &cfg.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Self {
            secret,
            jwks,
            validation,
        }
    }

    fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            unauthorized("bearer token is malformed or uses an unsupported algorithm")
        })?;
        let claims = match header.alg {
            Algorithm::HS256 => {
                let key = self
                    .secret
                    .as_ref()
                    .ok_or_else(|| unauthorized("HS256 bearer tokens are not accepted"))?;
                self.decode(token, key, Algorithm::HS256)
                    .map_err(|e| token_error(&e))?
            }
            alg if JWKS_ALGS.contains(&alg) => {
                let mut candidates = self
                    .jwks
                    .iter()
                    .filter(|k| k.algs.contains(&alg))
                    .filter(|k| match &header.kid {
                        Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
                        None => true,
                    })
                    .peekable();
                if candidates.peek().is_none() {
                    return Err(unauthorized(if header.kid.is_some() {
                        "bearer token names an unknown signing key"
                    } else {
                        "bearer token algorithm is not accepted"
                    }));
                }
                let mut verified = None;
                for candidate in candidates {
                    match self.decode(token, &candidate.key, alg) {
                        Ok(claims) => {
                            verified = Some(claims);
                            break;
                        }
                        // Wrong key: try the next one.
                        Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                        Err(e) => return Err(token_error(&e)),
                    }
                }
                verified.ok_or_else(|| unauthorized("bearer token signature is invalid"))?
            }
            _ => return Err(unauthorized("bearer token algorithm is not accepted")),
        };
        caller_from_claims(claims)
    }

    fn decode(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Claims, JwtError> {
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        jsonwebtoken::decode::<Claims>(token, key, &validation).map(|data| data.claims)
    }
}

/// The caller named by verified claims.
fn caller_from_claims(claims: Claims) -> Result<Caller, ApiError> {
    if claims.nbf.as_ref().is_some_and(|v| !v.is_number()) {
        return Err(unauthorized("bearer token has a malformed nbf claim"));
    }
    let scope = match &claims.scope {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(unauthorized("bearer token scope claim is not a string")),
    };
    Caller::from_claims(
        claims.client_id.as_ref().and_then(Value::as_str),
        claims.sub.as_ref().and_then(Value::as_str),
        scope,
    )
    .ok_or_else(|| unauthorized("bearer token has neither a client_id nor a sub claim"))
}

/// The token of the request's `Authorization: Bearer` header.
fn bearer_token(parts: &http::request::Parts) -> Result<&str, ApiError> {
    let mut values = parts.headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values
        .next()
        .ok_or_else(|| unauthorized("missing Authorization header; a Bearer token is required"))?;
    if values.next().is_some() {
        return Err(unauthorized("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| unauthorized("Authorization header is not valid ASCII"))?
        .trim();
    let (scheme, token) = value
        .split_once([' ', '\t'])
        .map_or((value, ""), |(s, t)| (s, t.trim()));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized("Authorization scheme must be Bearer"));
    }
    if token.is_empty() {
        return Err(unauthorized("bearer token is empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(unauthorized("bearer token is too long"));
    }
    if token.contains(char::is_whitespace) {
        return Err(unauthorized("bearer token is malformed"));
    }
    Ok(token)
}

/// A short, token-free message for a failed decode.
fn token_error(e: &JwtError) -> ApiError {
    unauthorized(match e.kind() {
        ErrorKind::ExpiredSignature => "bearer token has expired",
        ErrorKind::ImmatureSignature => "bearer token is not yet valid",
        ErrorKind::InvalidIssuer => "bearer token has the wrong issuer",
        ErrorKind::InvalidAudience => "bearer token has the wrong audience",
        ErrorKind::InvalidSignature => "bearer token signature is invalid",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "bearer token algorithm is not accepted"
        }
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "bearer token lacks the exp claim",
            "iss" => "bearer token lacks the iss claim",
            "aud" => "bearer token lacks the aud claim",
            _ => "bearer token lacks a required claim",
        },
        _ => "bearer token is malformed",
    })
}

fn unauthorized(msg: &str) -> ApiError {
    ApiError::Unauthorized(msg.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::json;

    const SECRET: &str = "test-secret-with-enough-bytes-0123456789";

    // Throwaway keys generated for these tests only (never used elsewhere).
    // P-256 private key, PKCS#8 DER.
    const EC_PKCS8_HEX: &str = concat!(
        "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420",
        "3978efd1131e34e64f848504de3e1294c6137a02ce01dfcccb76f8fcabb1359da1440342",
        "00042375f3265a8400353e2bf41a74941467386fd4e45dfe2e1b934c35d47a6785f7c729",
        "128f9c8ed0e7ec099a03eafac49044ca15e165846393fe0bd1c881fd7d05",
    );
    const EC_X: &str = "I3XzJlqEADU-K_QadJQUZzhv1ORd_i4bk0w11Hpnhfc";
    const EC_Y: &str = "xykSj5yO0OfsCZoD6vrEkETKFeFlhGOT_gvRyIH9fQU";
    // RSA-2048 private key, PKCS#1 DER.
    const RSA_DER_HEX: &str = concat!(
        "308204a40201000282010100ed48dd412dca352c4b9118b3049f53a49d8bd4f654c43c23d2db98e4015149d187135130",
        "6742f7f251761c4e24e33128eca56b3b94cec72955cf49afc774676f1abee163c19f946a6c6e7448e55e992b92748002",
        "ddd4c470040bc58241a7b646178a1b49bdce9b39d661ea3ee9099e2d6deca8594ade1d2d4608c72271885197bf287391",
        "08e0e38392a00076909fc77d1295ddeb3398ed1f3426687363cd595bb592a61b78e7de512409539a88a8e4e716cf899e",
        "17c05370e0a77822a3a2de7bb46a5c34a532a0907ebc45b5c94ee09502009f427a830f4f6a1d834b4c97dfdadccc5640",
        "d40c402bcabab06cf5c2fecf4025d6c7517b84bf8c3fee9e1632f219020301000102820100399b1b6ff3f467d551a12f",
        "ac625e65d98c90028b2d08190b9f68c5a4f0f6f1a3671616fb57ce67d091db4942e56caca62151858788f86c5c8a2311",
        "6215db9a32dc7ce3ce2a9719da7e69905c9426d3abc2d9faabf77bec96bf3cb65e099f743e6eff8de168adac7cada1c6",
        "d33013302e1a463e96b2f8da7f7fc5a8c6a166755c18948cc3945d9f4443aa2a4971125231ab01848b166682bddcf043",
        "bb1ba90d80681472f8a521a7f097ae7db8388f5740c8e886e33c887d0cec8fd43d73507522170b0a8109e1f0f891ff81",
        "6e6a3e0d1af7b770b0364787e67cf86f8ff7252f0e6f67ae68fb0a6c98f8e919672fa0ebb5755639f11adb287ed703d3",
        "195725a25302818100f9075312679b6ead8dfd6766ab7382f6890469e02560f5a09da3221127152f38a9395fb54857b7",
        "2d3d08b8fea8448be3f4a8b677fa9e94506464301405dead66be01610143a51b6039063e6cdc272b1dbb8f6956356cdb",
        "e0e8191110a57bc90844d281c4b59c507e3806778c786eac6401a88e5296554ffaaae1a999592a918702818100f3ed60",
        "3dbca52c770a38320b4bb5d53b2d3773fc34935b0fbba36fa60ace3ccb3e6834a88f2efe04ab71a137edd16ed1f9d12a",
        "3737ff9e4bf154615aa8213ba6f9fade599cdc6345494e524c38d7d0fee06492ceddac1fea086d2adf1d07ecd577623b",
        "a4aebdf24739739b93921fbe10202c3fd1804fd97554c98822a341c75f028180036b7a54925fac116e15c0c9c428fdef",
        "6cca46b9f14977961114206fa3ddc29c4096ad1dcc34882b72df1fcb3f7c517f7be8a538d8943ced2db3c28543df5efa",
        "3e39be9f49d286a1b7a6c24cb469454a4f3d14f13e2294926e1d8a02748352ab6e6685a9b1e4c7a63416c2a58731dde4",
        "31b1a2e2b775cc7760c9608ede8e9b1902818100cfadcd01033a462f5bde188d917a50ffbf31b5688782e646f0e4e7cc",
        "20eb12cba068ac5ccefb9d7e7051a087b3cd5a6320253ba223e558eb239f49fc1ba59fda3c7fa10bff078ce592d24233",
        "6f3a2050c0d020464c699e0a6dfe34401dc17f9d07b5f53df320f9c4365ffd979913b988953bd76211b2ea5c8141cccc",
        "60df425502818100a98cac94c1f23861e7921092debad7eb9f8eea7744a9d064b6d8657ad247abd442b730d72abe5cd7",
        "d1e99e9a99cb6a3dfb6825be9d4ddd1ec287c8d394e695354c2bbbd2e2bed869246431ca09f182e107cc857f9526bf56",
        "93e7adb84c4700122cb8c4e1f03ae7eb5845cb84de6a305daae85bc5022cf40f6e6cc2904bce88e1",
    );
    const RSA_N: &str = concat!(
        "7UjdQS3KNSxLkRizBJ9TpJ2L1PZUxDwj0tuY5AFRSdGHE1EwZ0L38lF2HE4k4zEo7KVrO5TOxylVz0mvx3Rnbxq-4WPBn5Rq",
        "bG50SOVemSuSdIAC3dTEcAQLxYJBp7ZGF4obSb3OmznWYeo-6QmeLW3sqFlK3h0tRgjHInGIUZe_KHORCODjg5KgAHaQn8d9",
        "EpXd6zOY7R80JmhzY81ZW7WSpht4595RJAlTmoio5OcWz4meF8BTcOCneCKjot57tGpcNKUyoJB-vEW1yU7glQIAn0J6gw9P",
        "ah2DS0yX39rczFZA1AxAK8q6sGz1wv7PQCXWx1F7hL-MP-6eFjLyGQ",
    );

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn b64url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    fn now() -> u64 {
        get_current_timestamp()
    }

    fn hs_config() -> AuthConfig {
        AuthConfig {
            hs256_secret: Some(SECRET.into()),
            jwks: None,
            issuer: None,
            audience: None,
        }
    }

    fn jwks() -> Value {
        json!({"keys": [
            {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": RSA_N, "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y},
            {"kty": "OKP", "crv": "X25519", "x": "AAAA", "use": "enc"},
        ]})
    }

    fn jwks_config() -> AuthConfig {
        AuthConfig {
            hs256_secret: None,
            jwks: Some(jwks()),
            issuer: None,
            audience: None,
        }
    }

    fn mint(header: Header, claims: &Value, key: &EncodingKey) -> String {
        encode(&header, claims, key).unwrap()
    }

    fn mint_hs(claims: &Value) -> String {
        mint(
            Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
    }

    fn mint_rs(kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        mint(
            header,
            claims,
            &EncodingKey::from_rsa_der(&hex(RSA_DER_HEX)),
        )
    }

    fn mint_es(claims: &Value) -> String {
        mint(
            Header::new(Algorithm::ES256),
            claims,
            &EncodingKey::from_ec_der(&hex(EC_PKCS8_HEX)),
        )
    }

    fn parts(authorization: Option<&str>) -> http::request::Parts {
        let mut builder = http::Request::builder().uri("/fhir/$export");
        if let Some(value) = authorization {
            builder = builder.header(http::header::AUTHORIZATION, value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn check(cfg: AuthConfig, authorization: Option<&str>) -> Result<Caller, ApiError> {
        jwt_authenticator(cfg)(&parts(authorization))
    }

    fn check_token(cfg: AuthConfig, token: &str) -> Result<Caller, ApiError> {
        check(cfg, Some(&format!("Bearer {token}")))
    }

    /// Asserts a 401 whose message does not echo the token; returns the message.
    fn assert_401(result: Result<Caller, ApiError>, token: &str) -> String {
        match result {
            Err(ApiError::Unauthorized(msg)) => {
                assert!(!msg.is_empty());
                assert!(token.is_empty() || !msg.contains(token), "{msg}");
                for part in token.split('.').filter(|p| p.len() > 3) {
                    assert!(!msg.contains(part), "{msg}");
                }
                msg
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }

    #[test]
    fn valid_hs256_token_gives_client_id_and_scopes() {
        let token = mint_hs(&json!({
            "client_id": "client-a", "sub": "someone-else",
            "scope": "system/Patient.read  system/Observation.read\tsystem/*.rs",
            "exp": now() + 300, "iat": now(),
        }));
        let caller = check_token(hs_config(), &token).unwrap();
        assert_eq!(caller.client_id, "client-a");
        assert_eq!(
            caller.scopes,
            [
                "system/Patient.read",
                "system/Observation.read",
                "system/*.rs"
            ]
        );
    }

    #[test]
    fn scheme_is_case_insensitive_and_scope_is_optional() {
        let token = mint_hs(&json!({"sub": "s", "exp": now() + 60}));
        let caller = check(hs_config(), Some(&format!("bEaReR   {token} "))).unwrap();
        assert_eq!(caller.client_id, "s");
        assert!(caller.scopes.is_empty());
    }

    #[test]
    fn sub_is_the_fallback_identity() {
        let token = mint_hs(&json!({"sub": "svc-1", "scope": "system/*.read", "exp": now() + 60}));
        assert_eq!(check_token(hs_config(), &token).unwrap().client_id, "svc-1");
        let token = mint_hs(&json!({"client_id": "", "sub": "svc-2", "exp": now() + 60}));
        assert_eq!(check_token(hs_config(), &token).unwrap().client_id, "svc-2");
        let token = mint_hs(&json!({"client_id": 7, "sub": "svc-3", "exp": now() + 60}));
        assert_eq!(check_token(hs_config(), &token).unwrap().client_id, "svc-3");
    }

    #[test]
    fn no_identity_is_rejected() {
        let token = mint_hs(&json!({"scope": "system/*.read", "exp": now() + 60}));
        assert_401(check_token(hs_config(), &token), &token);
        let token = mint_hs(&json!({"client_id": "", "sub": "", "exp": now() + 60}));
        assert_401(check_token(hs_config(), &token), &token);
    }

    #[test]
    fn expired_token_is_rejected() {
        let token = mint_hs(&json!({"sub": "s", "exp": now() - 120}));
        let msg = assert_401(check_token(hs_config(), &token), &token);
        assert!(msg.contains("expired"), "{msg}");
        // Within the leeway it is still accepted.
        let token = mint_hs(&json!({"sub": "s", "exp": now() - 5}));
        assert!(check_token(hs_config(), &token).is_ok());
    }

    #[test]
    fn missing_exp_is_rejected() {
        let token = mint_hs(&json!({"sub": "s"}));
        assert_401(check_token(hs_config(), &token), &token);
        let token = mint_hs(&json!({"sub": "s", "exp": "tomorrow"}));
        assert_401(check_token(hs_config(), &token), &token);
    }

    #[test]
    fn future_nbf_is_rejected() {
        let token = mint_hs(&json!({"sub": "s", "exp": now() + 600, "nbf": now() + 300}));
        assert_401(check_token(hs_config(), &token), &token);
        let token = mint_hs(&json!({"sub": "s", "exp": now() + 600, "nbf": now() - 10}));
        assert!(check_token(hs_config(), &token).is_ok());
        let token = mint_hs(&json!({"sub": "s", "exp": now() + 600, "nbf": "soon"}));
        assert_401(check_token(hs_config(), &token), &token);
    }

    #[test]
    fn wrong_secret_is_rejected() {
        let token = mint(
            Header::new(Algorithm::HS256),
            &json!({"sub": "s", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another-secret-entirely-0123456789"),
        );
        let msg = assert_401(check_token(hs_config(), &token), &token);
        assert!(msg.contains("signature"), "{msg}");
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let token =
            mint_hs(&json!({"sub": "s", "scope": "system/Patient.read", "exp": now() + 60}));
        let mut pieces: Vec<String> = token.split('.').map(str::to_owned).collect();
        pieces[1] = b64url(
            json!({"sub": "s", "scope": "system/*.*", "exp": now() + 60})
                .to_string()
                .as_bytes(),
        );
        let forged = pieces.join(".");
        assert_401(check_token(hs_config(), &forged), &forged);
    }

    #[test]
    fn issuer_is_checked_when_configured() {
        let cfg = AuthConfig {
            issuer: Some("https://idp.example".into()),
            ..hs_config()
        };
        let good = mint_hs(&json!({"sub": "s", "iss": "https://idp.example", "exp": now() + 60}));
        assert!(check_token(cfg.clone(), &good).is_ok());
        let wrong = mint_hs(&json!({"sub": "s", "iss": "https://evil.example", "exp": now() + 60}));
        let msg = assert_401(check_token(cfg.clone(), &wrong), &wrong);
        assert!(msg.contains("issuer"), "{msg}");
        let missing = mint_hs(&json!({"sub": "s", "exp": now() + 60}));
        assert_401(check_token(cfg, &missing), &missing);
    }

    #[test]
    fn audience_is_checked_when_configured() {
        let cfg = AuthConfig {
            audience: Some("https://bulk.example/fhir".into()),
            ..hs_config()
        };
        let good =
            mint_hs(&json!({"sub": "s", "aud": "https://bulk.example/fhir", "exp": now() + 60}));
        assert!(check_token(cfg.clone(), &good).is_ok());
        let list = mint_hs(
            &json!({"sub": "s", "aud": ["x", "https://bulk.example/fhir"], "exp": now() + 60}),
        );
        assert!(check_token(cfg.clone(), &list).is_ok());
        let wrong =
            mint_hs(&json!({"sub": "s", "aud": "https://other.example", "exp": now() + 60}));
        let msg = assert_401(check_token(cfg.clone(), &wrong), &wrong);
        assert!(msg.contains("audience"), "{msg}");
        let missing = mint_hs(&json!({"sub": "s", "exp": now() + 60}));
        assert_401(check_token(cfg, &missing), &missing);
        // Without a configured audience, any `aud` is accepted.
        assert!(check_token(hs_config(), &wrong).is_ok());
    }

    #[test]
    fn alg_none_is_rejected() {
        let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64url(
            json!({"client_id": "attacker", "scope": "system/*.read", "exp": now() + 60})
                .to_string()
                .as_bytes(),
        );
        let token = format!("{header}.{payload}.");
        assert_401(check_token(hs_config(), &token), &token);
        assert_401(check_token(jwks_config(), &token), &token);
    }

    #[test]
    fn unaccepted_algorithms_are_rejected() {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let claims = json!({"sub": "s", "exp": now() + 60});
        let hs512 = mint(Header::new(Algorithm::HS512), &claims, &key);
        assert_401(check_token(hs_config(), &hs512), &hs512);
        // HS256 is refused when no shared secret is configured.
        let hs256 = mint_hs(&claims);
        assert_401(check_token(jwks_config(), &hs256), &hs256);
        // RS256 is refused when no JWKS is configured.
        let rs256 = mint_rs(Some("rsa-1"), &claims);
        assert_401(check_token(hs_config(), &rs256), &rs256);
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for token in [
            "abc.def",
            "abc",
            "a.b.c",
            "..",
            "eyJhbGciOiJIUzI1NiJ9.!!!.xyz",
        ] {
            assert_401(check_token(hs_config(), token), token);
        }
        assert_401(check(hs_config(), Some("Bearer")), "");
        assert_401(check(hs_config(), Some("Bearer ")), "");
        assert_401(check(hs_config(), Some("Bearer a b")), "");
    }

    #[test]
    fn missing_or_non_bearer_header_is_rejected() {
        let msg = assert_401(check(hs_config(), None), "");
        assert!(msg.contains("Authorization"), "{msg}");
        assert_401(check(hs_config(), Some("Basic xyz")), "xyz");
        let token = mint_hs(&json!({"sub": "s", "exp": now() + 60}));
        assert_401(check(hs_config(), Some(&format!("Token {token}"))), &token);
    }

    #[test]
    fn two_authorization_headers_are_rejected() {
        let token = mint_hs(&json!({"sub": "s", "exp": now() + 60}));
        let mut p = parts(Some(&format!("Bearer {token}")));
        p.headers.append(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        assert_401(jwt_authenticator(hs_config())(&p), &token);
    }

    #[test]
    fn no_key_source_rejects_everything() {
        let cfg = AuthConfig {
            hs256_secret: None,
            jwks: None,
            issuer: None,
            audience: None,
        };
        assert!(!cfg.is_enabled());
        let token = mint_hs(&json!({"sub": "s", "exp": now() + 60}));
        assert_401(check_token(cfg, &token), &token);
    }

    #[test]
    fn rs256_via_jwks_with_kid() {
        let token = mint_rs(
            Some("rsa-1"),
            &json!({"client_id": "rs-client", "scope": "system/*.read", "exp": now() + 60}),
        );
        let caller = check_token(jwks_config(), &token).unwrap();
        assert_eq!(caller.client_id, "rs-client");
        assert_eq!(caller.scopes, ["system/*.read"]);
        // Without a kid every RS256-capable key is tried.
        let token = mint_rs(None, &json!({"sub": "rs-sub", "exp": now() + 60}));
        assert_eq!(
            check_token(jwks_config(), &token).unwrap().client_id,
            "rs-sub"
        );
    }

    #[test]
    fn rs256_with_unknown_kid_or_expired_is_rejected() {
        let token = mint_rs(Some("nope"), &json!({"sub": "s", "exp": now() + 60}));
        assert_401(check_token(jwks_config(), &token), &token);
        let token = mint_rs(Some("rsa-1"), &json!({"sub": "s", "exp": now() - 600}));
        let msg = assert_401(check_token(jwks_config(), &token), &token);
        assert!(msg.contains("expired"), "{msg}");
    }

    #[test]
    fn rs256_signed_by_another_key_is_rejected() {
        // A JWKS whose only RSA key has a different modulus.
        let mut other = jwks();
        let mut n = RSA_N.to_owned();
        n.replace_range(10..11, if &n[10..11] == "A" { "B" } else { "A" });
        other["keys"][0]["n"] = json!(n);
        let cfg = AuthConfig {
            jwks: Some(other),
            ..jwks_config()
        };
        let token = mint_rs(Some("rsa-1"), &json!({"sub": "s", "exp": now() + 60}));
        let msg = assert_401(check_token(cfg, &token), &token);
        assert!(msg.contains("signature"), "{msg}");
    }

    #[test]
    fn es256_via_jwks_without_kid() {
        let token = mint_es(&json!({"client_id": "ec-client", "exp": now() + 60}));
        assert_eq!(
            check_token(jwks_config(), &token).unwrap().client_id,
            "ec-client"
        );
        // The EC key is not offered for ES384.
        let mut header = Header::new(Algorithm::ES384);
        header.kid = None;
        let forged = {
            let mut pieces: Vec<String> = token.split('.').map(str::to_owned).collect();
            pieces[0] = b64url(serde_json::to_string(&header).unwrap().as_bytes());
            pieces.join(".")
        };
        assert_401(check_token(jwks_config(), &forged), &forged);
    }

    #[test]
    fn hs256_and_jwks_together() {
        let cfg = AuthConfig {
            hs256_secret: Some(SECRET.into()),
            ..jwks_config()
        };
        let hs = mint_hs(&json!({"sub": "hs", "exp": now() + 60}));
        let es = mint_es(&json!({"sub": "es", "exp": now() + 60}));
        assert_eq!(check_token(cfg.clone(), &hs).unwrap().client_id, "hs");
        assert_eq!(check_token(cfg, &es).unwrap().client_id, "es");
    }

    #[test]
    fn from_files_reads_and_checks_the_jwks() {
        let dir =
            std::env::temp_dir().join(format!("bulk-export-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("jwks.json");
        std::fs::write(&good, jwks().to_string()).unwrap();
        let cfg =
            AuthConfig::from_files(None, Some(&good), Some(String::new()), Some("aud".into()))
                .unwrap();
        assert!(cfg.is_enabled());
        assert_eq!(cfg.issuer, None);
        assert_eq!(cfg.audience.as_deref(), Some("aud"));
        assert_eq!(jwks_keys(cfg.jwks.as_ref().unwrap()).unwrap().0.len(), 2);

        let not_json = dir.join("bad.json");
        std::fs::write(&not_json, "{not json").unwrap();
        assert!(AuthConfig::from_files(None, Some(&not_json), None, None).is_err());
        let no_keys = dir.join("empty.json");
        std::fs::write(&no_keys, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap();
        assert!(AuthConfig::from_files(None, Some(&no_keys), None, None).is_err());
        let no_array = dir.join("noarray.json");
        std::fs::write(&no_array, r#"{"kty": "RSA"}"#).unwrap();
        assert!(AuthConfig::from_files(None, Some(&no_array), None, None).is_err());
        assert!(AuthConfig::from_files(None, Some(&dir.join("missing.json")), None, None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();

        assert!(AuthConfig::from_files(Some(String::new()), None, None, None).is_err());
        let hs = AuthConfig::from_files(Some(SECRET.into()), None, None, None).unwrap();
        assert!(hs.is_enabled());
        assert!(
            !AuthConfig::from_files(None, None, None, None)
                .unwrap()
                .is_enabled()
        );
    }

    #[test]
    fn debug_output_redacts_the_secret() {
        let shown = format!("{:?}", hs_config());
        assert!(!shown.contains(SECRET), "{shown}");
    }
}
