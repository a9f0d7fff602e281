//! [`Traffic`]: a TLS 1.3 connection's records once the handshake is done, opened and sealed here with the
//! negotiated suite's own AEAD from the crypto provider (the code rustls itself runs), so that a record is
//! decrypted where it was received and its plaintext copied once, into the caller's buffer. rustls 0.23's
//! unbuffered API copies every decrypted record into a `Vec` of its own first (an allocation and a copy per
//! record).
//!
//! rustls keeps what it alone should: the key schedule and the session store. Through its
//! `KernelConnection` it derives the next keys on a key update and files the server's session tickets in
//! the `ClientConfig`'s store, so `--tls-resume` works as before.
//!
//! The provider's `MessageDecrypter` and `MessageEncrypter` protect the records (nonce, additional data,
//! inner content type and padding); the rest of RFC 8446 section 5 after the handshake is here: framing,
//! sequence numbers, post-handshake messages (NewSessionTicket, KeyUpdate), alerts, and a new sending key
//! before the AEAD's confidentiality limit.
//!
//! Errors are rustls' own [`rustls::Error`] values, so that [`super::classify`] and the report treat them
//! as before, and each knows the alert to send ([`alert_for`]).

use rustls::client::ClientConnectionData;
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
    Tls13AeadAlgorithm,
};
use rustls::kernel::KernelConnection;
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, ExtractedSecrets, HandshakeType, InvalidMessage,
    ProtocolVersion, SupportedCipherSuite,
};

use super::session::{Progress, MAX_RECORD};

/// RFC 8446 section 5.1: at most 2^14 bytes of plaintext in a record.
const MAX_FRAGMENT: usize = 16 * 1024;
/// Section 5.2: the encrypted part of a record is at most 2^14 + 256 bytes.
const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 256;
/// Bytes of a post-handshake message kept while its record(s) arrive (a NewSessionTicket is a few hundred).
const MAX_HANDSHAKE: usize = 64 * 1024;

/// The outer type of every record after the handshake (section 5.2).
const APPLICATION_DATA: u8 = 23;

/// One direction's record protection: the provider's crypter and the sequence number of its next record.
struct Direction<C: ?Sized> {
    crypter: Box<C>,
    seq: u64,
}

/// The receiving direction for `secrets`, with the suite's AEAD.
fn opener(
    aead: &dyn Tls13AeadAlgorithm,
    (seq, secrets): (u64, ConnectionTrafficSecrets),
) -> Result<Direction<dyn MessageDecrypter>, rustls::Error> {
    let (key, iv) = key_and_iv(secrets)?;
    Ok(Direction { crypter: aead.decrypter(key, iv), seq })
}

/// The sending direction for `secrets`, with the suite's AEAD.
fn sealer(
    aead: &dyn Tls13AeadAlgorithm,
    (seq, secrets): (u64, ConnectionTrafficSecrets),
) -> Result<Direction<dyn MessageEncrypter>, rustls::Error> {
    let (key, iv) = key_and_iv(secrets)?;
    Ok(Direction { crypter: aead.encrypter(key, iv), seq })
}

fn key_and_iv(secrets: ConnectionTrafficSecrets) -> Result<(AeadKey, Iv), rustls::Error> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        _ => Err(rustls::Error::General("traffic secrets of an unknown kind".into())),
    }
}

/// A TLS 1.3 client connection after its handshake: records in and out.
pub struct Traffic {
    kernel: KernelConnection<ClientConnectionData>,
    /// The negotiated suite's AEAD, for the keys of a key update.
    aead: &'static dyn Tls13AeadAlgorithm,
    rx: Direction<dyn MessageDecrypter>,
    tx: Direction<dyn MessageEncrypter>,
    /// Records sealed with one key before the next key is taken (the suite's confidentiality limit).
    tx_limit: u64,
    /// A post-handshake message whose records have not all arrived; unallocated when empty.
    handshake: Vec<u8>,
}

impl Traffic {
    /// Takes over from rustls with the secrets and sequence numbers it handed out.
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ClientConnectionData>,
    ) -> Result<Traffic, rustls::Error> {
        let SupportedCipherSuite::Tls13(suite) = kernel.negotiated_cipher_suite() else {
            return Err(rustls::Error::General("not a TLS 1.3 suite".into()));
        };
        let aead = suite.aead_alg;
        Ok(Traffic {
            rx: opener(aead, secrets.rx)?,
            tx: sealer(aead, secrets.tx)?,
            aead,
            tx_limit: suite.common.confidentiality_limit,
            kernel,
            handshake: Vec::new(),
        })
    }

    /// Opens the whole records at the front of `input`, in place: application data goes to `out` (what
    /// does not fit to `spill`), a key update asked for by the server is answered into `outgoing`. Stops at
    /// an unfinished record, when `out` is full, or at the server's `close_notify` (`Ok(true)`: nothing
    /// after it is read). `progress` says how far it got, also on an error.
    pub fn open(
        &mut self,
        input: &mut [u8],
        out: &mut [u8],
        spill: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
        progress: &mut Progress,
    ) -> Result<bool, rustls::Error> {
        loop {
            if !out.is_empty() && progress.written == out.len() {
                progress.full = true;
                return Ok(false);
            }
            let rest = &mut input[progress.consumed..];
            let [typ, _, _, hi, lo, ..] = *rest else { return Ok(false) };
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if len > MAX_CIPHERTEXT {
                return Err(rustls::Error::InvalidMessage(InvalidMessage::MessageTooLarge));
            }
            if rest.len() < 5 + len {
                return Ok(false);
            }
            // Section 5: after the handshake every record is protected, its outer type application_data
            // (a change_cipher_spec is allowed only before the server's Finished).
            if typ != APPLICATION_DATA {
                return Err(inappropriate(ContentType::from(typ)));
            }
            // The provider checks the tag, strips the padding and finds the real type (section 5.4).
            let body = &mut rest[5..5 + len];
            let message = InboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, body);
            let plain = self.rx.crypter.decrypt(message, self.rx.seq)?;
            self.rx.seq += 1;
            let content = plain.payload;
            // Section 5.1: a handshake message split over records has nothing else between its parts.
            if plain.typ != ContentType::Handshake && !self.handshake.is_empty() {
                return Err(inappropriate(plain.typ));
            }
            match plain.typ {
                ContentType::ApplicationData => {
                    let room = &mut out[progress.written..];
                    let take = content.len().min(room.len());
                    room[..take].copy_from_slice(&content[..take]);
                    progress.written += take;
                    spill.extend_from_slice(&content[take..]);
                    progress.consumed += 5 + len;
                }
                ContentType::Handshake => {
                    if content.is_empty() {
                        return Err(rustls::Error::InvalidMessage(InvalidMessage::InvalidEmptyPayload));
                    }
                    if self.handshake.len() + content.len() > MAX_HANDSHAKE {
                        return Err(rustls::Error::InvalidMessage(InvalidMessage::HandshakePayloadTooLarge));
                    }
                    self.handshake.extend_from_slice(content);
                    progress.consumed += 5 + len;
                    self.handle_handshake(outgoing)?;
                }
                ContentType::Alert => {
                    let &[level, description] = content else {
                        return Err(rustls::Error::InvalidMessage(InvalidMessage::MessageTooShort));
                    };
                    progress.consumed += 5 + len;
                    match AlertDescription::from(description) {
                        AlertDescription::CloseNotify => return Ok(true),
                        // Section 6.1: user_canceled is a warning, followed by close_notify.
                        AlertDescription::UserCanceled if level == 1 => {}
                        other => return Err(rustls::Error::AlertReceived(other)),
                    }
                }
                other => return Err(inappropriate(other)),
            }
        }
    }

    /// Seals `data` into records (16 KiB of plaintext each) appended to `outgoing`.
    pub fn seal(&mut self, data: &[u8], outgoing: &mut Vec<u8>) -> Result<(), rustls::Error> {
        for fragment in data.chunks(MAX_FRAGMENT) {
            self.seal_record(ContentType::ApplicationData, fragment, outgoing)?;
        }
        Ok(())
    }

    /// Seals the alert for a fatal error, if it has one (best effort: the connection ends anyway).
    pub fn seal_alert(&mut self, error: &rustls::Error, outgoing: &mut Vec<u8>) {
        if let Some(alert) = alert_for(error) {
            let _ = self.seal_record(ContentType::Alert, &[2, u8::from(alert)], outgoing);
        }
    }

    /// The suite negotiated.
    #[cfg(test)]
    pub fn suite(&self) -> rustls::CipherSuite {
        self.kernel.negotiated_cipher_suite().suite()
    }

    /// Handles every whole message in `handshake`.
    fn handle_handshake(&mut self, outgoing: &mut Vec<u8>) -> Result<(), rustls::Error> {
        while let [typ, a, b, c, ref rest @ ..] = *self.handshake {
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if rest.len() < len {
                return Ok(());
            }
            let typ = HandshakeType::from(typ);
            match typ {
                HandshakeType::NewSessionTicket => self.kernel.handle_new_session_ticket(&rest[..len])?,
                HandshakeType::KeyUpdate => {
                    let request = match rest[..len] {
                        [0] => false,
                        [1] => true,
                        _ => return Err(rustls::Error::InvalidMessage(InvalidMessage::InvalidKeyUpdate)),
                    };
                    // Section 5.1: handshake messages must not span a key change.
                    if rest.len() > len {
                        return Err(inappropriate(ContentType::Handshake));
                    }
                    self.rx = opener(self.aead, self.kernel.update_rx_secret()?)?;
                    if request {
                        self.update_tx(outgoing)?;
                    }
                }
                _ => {
                    return Err(rustls::Error::InappropriateHandshakeMessage {
                        expect_types: vec![HandshakeType::NewSessionTicket, HandshakeType::KeyUpdate],
                        got_type: typ,
                    })
                }
            }
            self.handshake.drain(..4 + len);
        }
        if self.handshake.is_empty() {
            self.handshake = Vec::new();
        }
        Ok(())
    }

    /// Section 4.6.3: sends a KeyUpdate (not asking for one back) under the current key, then takes the
    /// next one.
    fn update_tx(&mut self, outgoing: &mut Vec<u8>) -> Result<(), rustls::Error> {
        let update = [u8::from(HandshakeType::KeyUpdate), 0, 0, 1, 0];
        self.seal_record(ContentType::Handshake, &update, outgoing)?;
        self.tx = sealer(self.aead, self.kernel.update_tx_secret()?)?;
        Ok(())
    }

    /// Appends one record of `typ` holding `content` (at most [`MAX_FRAGMENT`] bytes).
    fn seal_record(&mut self, typ: ContentType, content: &[u8], out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        if self.tx.seq >= self.tx_limit {
            self.update_tx(out)?;
        }
        debug_assert!(content.len() + 5 + 1 + 16 <= MAX_RECORD, "bug: fragment longer than a record");
        let message =
            OutboundPlainMessage { typ, version: ProtocolVersion::TLSv1_2, payload: OutboundChunks::Single(content) };
        let record = self.tx.crypter.encrypt(message, self.tx.seq)?;
        self.tx.seq += 1;
        out.extend_from_slice(&record.encode());
        Ok(())
    }
}

fn inappropriate(got_type: ContentType) -> rustls::Error {
    rustls::Error::InappropriateMessage { expect_types: vec![ContentType::ApplicationData], got_type }
}

/// The alert that tells the server why we end the connection (none for its own fatal alert).
fn alert_for(error: &rustls::Error) -> Option<AlertDescription> {
    Some(match error {
        rustls::Error::AlertReceived(_) => return None,
        rustls::Error::DecryptError => AlertDescription::BadRecordMac,
        rustls::Error::InvalidMessage(InvalidMessage::MessageTooLarge) | rustls::Error::PeerSentOversizedRecord => {
            AlertDescription::RecordOverflow
        }
        rustls::Error::InvalidMessage(InvalidMessage::InvalidKeyUpdate) => AlertDescription::IllegalParameter,
        rustls::Error::InvalidMessage(why) => AlertDescription::from(*why),
        rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::PeerMisbehaved(_) => AlertDescription::UnexpectedMessage,
        _ => AlertDescription::InternalError,
    })
}
