//! Replays every committed fuzz corpus file (fuzz/corpus/<target>/*) through its target's entry point, on the
//! stable toolchain, so the seeds, what fuzzing found interesting, and every crash committed as a regression
//! are checked by each `cargo test`. The targets' logic is shared with the cargo-fuzz crate: this file
//! includes fuzz/src/entry.rs, whose functions panic on any property violation (see that file).

#[path = "../fuzz/src/entry.rs"]
mod entry;

use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus")
}

/// The files of one target's corpus, sorted (so a failure names the same file every run).
fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every corpus file of `target`, reporting the first file that panics by name.
fn replay(target: &str) {
    let (_, run) = entry::TARGETS.iter().find(|(name, _)| *name == target).expect("a known target");
    let files = corpus_files(target);
    assert!(!files.is_empty(), "fuzz/corpus/{target} has no seeds");
    for file in files {
        let data = std::fs::read(&file).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(
            outcome.is_ok(),
            "fuzz/corpus/{target}/{} fails its target",
            file.file_name().unwrap_or_default().to_string_lossy()
        );
    }
}

#[test]
fn every_corpus_directory_belongs_to_a_target_and_every_target_has_one() {
    let mut dirs: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("fuzz/corpus exists")
        .map(|e| e.expect("directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut targets: Vec<String> = entry::TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    targets.sort();
    assert_eq!(dirs, targets);
}

#[test]
fn handshake_request_corpus_upholds_the_request_parser_properties() {
    replay("handshake_request");
}

#[test]
fn codec_corpus_decodes_the_same_under_every_chunking() {
    replay("codec");
}

#[test]
fn control_corpus_round_trips_through_replies_and_envelopes() {
    replay("control");
}

#[test]
fn auth_corpus_upholds_carrier_and_verification_properties() {
    replay("auth");
}

#[test]
fn negotiate_corpus_round_trips_between_our_client_and_server() {
    replay("negotiate");
}

#[test]
fn conn_corpus_keeps_buffers_bounded_close_codes_documented_and_nothing_after_close() {
    replay("conn");
}

#[test]
fn a_token_signed_by_the_fuzz_key_verifies_and_a_flipped_signature_does_not() {
    // The auth target's claim path relies on sign_claims producing tokens the fixed key accepts.
    let claims = format!(r#"{{"sub":"alice","exp":{}}}"#, entry::NOW_UNIX + 60);
    let token = entry::sign_claims(claims.as_bytes());
    let mut keys = herald::protocol::auth::KeySet::new();
    keys.add_secret(entry::SECRET, &[jsonwebtoken::Algorithm::HS256]).expect("secret");
    let rules = herald::protocol::auth::ClaimRules { max_token_size: 4096, ..Default::default() };
    let verifier = herald::protocol::auth::Verifier::new(std::sync::Arc::new(keys), rules);
    assert!(verifier.verify(&token, entry::NOW_UNIX).is_ok());
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert!(verifier.verify(&forged, entry::NOW_UNIX).is_err());
}

#[test]
fn the_carrier_seeds_hold_a_token_the_fuzz_key_accepts() {
    // Otherwise the auth and negotiate targets would only ever see refusals.
    let verifier = {
        let mut keys = herald::protocol::auth::KeySet::new();
        keys.add_secret(entry::SECRET, &[jsonwebtoken::Algorithm::HS256]).expect("secret");
        let rules = herald::protocol::auth::ClaimRules { max_token_size: 4096, ..Default::default() };
        herald::protocol::auth::Verifier::new(std::sync::Arc::new(keys), rules)
    };
    for seed in ["seed-carrier-authorization", "seed-carrier-subprotocol", "seed-carrier-cookie"] {
        let data = std::fs::read(corpus_dir().join("auth").join(seed)).expect("seed");
        let head = herald::protocol::handshake::parse_request(&data[1..], 8192).expect("valid").expect("complete");
        let (token, _) = herald::protocol::auth::Carriers::default().find(&head).expect("a token");
        assert!(verifier.verify(token, entry::NOW_UNIX).is_ok(), "{seed}");
    }
}
