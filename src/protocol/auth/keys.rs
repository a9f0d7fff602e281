//! Verification keys, each pinned to the algorithms it may verify.
//!
//! A key never verifies an algorithm outside its own family, and only the algorithms configured for it: an
//! HMAC secret verifies HS256/384/512 only, a PEM public key only the algorithms named with it, a JWKS key only
//! its `alg` (or, for EC and OKP keys without one, the algorithm its curve implies). That pinning is what
//! defeats algorithm confusion (an HS256 token "signed" with the RSA public key as an HMAC secret) and
//! `alg: none` (not an algorithm any key lists).

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};

/// Why key material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// An algorithm name that is not one of HS/RS/PS/ES 256/384/512 or EdDSA.
    #[error("unknown algorithm `{0}`")]
    UnknownAlgorithm(String),
    /// An algorithm from another family than the key's (e.g. HS256 for an RSA key).
    #[error("algorithm {alg:?} does not fit a {family} key")]
    WrongFamily {
        /// The algorithm.
        alg: Algorithm,
        /// The key's family.
        family: &'static str,
    },
    /// No algorithm given for a key that needs one.
    #[error("no algorithm given for {0}")]
    NoAlgorithm(String),
    /// The PEM or JWK could not be read as a key.
    #[error("invalid key {what}: {message}")]
    Invalid {
        /// Which key.
        what: String,
        /// The parser's message.
        message: String,
    },
    /// An empty HMAC secret.
    #[error("the HMAC secret is empty")]
    EmptySecret,
}

/// One key and the algorithms it may verify (each with its prepared validation rules).
pub struct Key {
    kid: Option<String>,
    key: DecodingKey,
    algs: Vec<(Algorithm, Validation)>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        let algs: Vec<Algorithm> = self.algs.iter().map(|(a, _)| *a).collect();
        f.debug_struct("Key").field("kid", &self.kid).field("algs", &algs).finish_non_exhaustive()
    }
}

impl Key {
    /// The key id (`kid`), if it has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The key itself.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    /// The prepared validation for `alg`, when this key may verify it.
    pub fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.algs.iter().find(|(a, _)| *a == alg).map(|(_, v)| v)
    }
}

/// Every key the server accepts tokens from.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// No keys.
    pub fn new() -> Self {
        KeySet::default()
    }

    /// Whether there is no key at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Adds an HMAC secret that verifies `algs` (each must be HS256, HS384 or HS512).
    pub fn add_secret(&mut self, secret: &[u8], algs: &[Algorithm]) -> Result<(), KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        self.push(None, DecodingKey::from_secret(secret), AlgorithmFamily::Hmac, algs, "HMAC secret")
    }

    /// Adds a PEM public key (RSA, EC or Ed25519, told apart by the algorithms given) that verifies `algs`.
    pub fn add_pem(&mut self, pem: &[u8], algs: &[Algorithm], kid: Option<String>) -> Result<(), KeyError> {
        let Some(first) = algs.first() else { return Err(KeyError::NoAlgorithm("the PEM public key".into())) };
        let family = first.family();
        let parsed = match family {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
            AlgorithmFamily::Hmac => {
                return Err(KeyError::WrongFamily { alg: *first, family: "PEM public" });
            }
        };
        let key = parsed.map_err(|e| KeyError::Invalid { what: "PEM public key".into(), message: e.to_string() })?;
        self.push(kid, key, family, algs, "PEM public key")
    }

    /// Adds every key of a JWKS document (`{"keys":[...]}`). Keys without a `kid` are refused (a JWKS is
    /// for choosing keys by `kid`); RSA and `oct` keys need an `alg`; EC and OKP keys default to the algorithm
    /// their curve implies.
    pub fn add_jwks(&mut self, json: &[u8]) -> Result<(), KeyError> {
        let set: JwkSet = serde_json::from_slice(json)
            .map_err(|e| KeyError::Invalid { what: "JWKS document".into(), message: e.to_string() })?;
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone();
            let what = format!("JWKS key {}", kid.as_deref().unwrap_or("(no kid)"));
            let Some(kid) = kid else {
                return Err(KeyError::Invalid { what, message: "every JWKS key needs a `kid`".into() });
            };
            let alg = match jwk.common.key_algorithm {
                Some(ka) => Algorithm::try_from(ka).map_err(|_| KeyError::UnknownAlgorithm(ka.to_string()))?,
                None => match &jwk.algorithm {
                    AlgorithmParameters::EllipticCurve(p) => match p.curve {
                        EllipticCurve::P256 => Algorithm::ES256,
                        EllipticCurve::P384 => Algorithm::ES384,
                        _ => return Err(KeyError::Invalid { what, message: "unsupported curve".into() }),
                    },
                    AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                    _ => return Err(KeyError::NoAlgorithm(what)),
                },
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| KeyError::Invalid { what: what.clone(), message: e.to_string() })?;
            let family = key.family();
            self.push(Some(kid), key, family, &[alg], &what)?;
        }
        Ok(())
    }

    /// The keys that may verify a token with header `alg` and `kid`.
    ///
    /// A token naming a `kid` that some key has is checked against that key only; otherwise (no `kid`, or a
    /// `kid` no key has) against the keys that have no `kid`. Either way only keys pinned to `alg` qualify.
    pub fn candidates<'a>(&'a self, alg: Algorithm, kid: Option<&'a str>) -> impl Iterator<Item = &'a Key> + 'a {
        let by_kid = kid.is_some() && self.keys.iter().any(|k| k.kid.is_some() && k.kid.as_deref() == kid);
        self.keys
            .iter()
            .filter(move |k| if by_kid { k.kid.as_deref() == kid } else { k.kid.is_none() })
            .filter(move |k| k.validation(alg).is_some())
    }

    /// Whether any key at all is pinned to `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.keys.iter().any(|k| k.validation(alg).is_some())
    }

    fn push(
        &mut self,
        kid: Option<String>,
        key: DecodingKey,
        family: AlgorithmFamily,
        algs: &[Algorithm],
        what: &str,
    ) -> Result<(), KeyError> {
        if algs.is_empty() {
            return Err(KeyError::NoAlgorithm(what.to_string()));
        }
        let mut prepared = Vec::with_capacity(algs.len());
        for &alg in algs {
            if alg.family() != family {
                return Err(KeyError::WrongFamily { alg, family: family_name(family) });
            }
            prepared.push((alg, validation_for(alg)));
        }
        self.keys.push(Key { kid, key, algs: prepared });
        Ok(())
    }
}

/// Parses an algorithm name as written in config (`HS256`, `RS256`, `ES256`, `EdDSA`, ...).
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    name.trim().parse::<Algorithm>().map_err(|_| KeyError::UnknownAlgorithm(name.to_string()))
}

/// Signature-only validation for `alg`: the claims (`exp`, `nbf`, `iss`, `aud`) are checked by
/// [`crate::protocol::auth::verify`] against a time passed in, not against the system clock.
fn validation_for(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    v
}

fn family_name(f: AlgorithmFamily) -> &'static str {
    match f {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "EdDSA",
    }
}
