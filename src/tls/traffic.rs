//! [`Traffic`]: the record layer of an established TLS 1.3 connection, run by herald with the traffic keys
//! rustls derived (rustls' `kernel` API: rustls keeps the key schedule for key updates, everything else is
//! here).
//!
//! Why: a fan-out turn hands a TLS connection dozens of small frames. Through rustls they were joined in a
//! buffer, copied again into a fresh allocation inside rustls, sealed, and copied a third time into a zeroed
//! output buffer. Here they are gathered once, straight into the output buffer behind a record header, and
//! sealed in place; a received record is copied once into the caller's plaintext buffer and opened there.
//!
//! What a TLS 1.3 record layer owes the peer (RFC 8446 section 5), all of it here:
//! - records of at most 2^14 bytes of plaintext, each under a nonce made of the IV and the record's
//!   sequence number, the record header as additional data, and the real content type inside;
//! - a received record longer than 2^14 + 256 bytes is `record_overflow`; one that does not open is
//!   `bad_record_mac`; an outer type other than `application_data`, an inner type other than data, alert
//!   or handshake, or nothing but padding is `unexpected_message`;
//! - the peer's `close_notify` ends its stream; a warning `user_canceled` is ignored (at most 4 warnings per
//!   connection); any other alert ends the connection;
//! - the only handshake message a client may send now is `KeyUpdate`: the receive keys move on, and when
//!   the peer asks for it our own `KeyUpdate` goes out and the send keys move on too (at most 32 in a row
//!   without application data in between, so a client cannot keep the server re-keying for nothing);
//! - the send keys are refreshed (a `KeyUpdate` of our own) before the cipher suite's confidentiality
//!   limit is reached (2^24 records for AES-GCM).
//!
//! Sans-IO like [`super::session`]: bytes in, bytes out, no sockets and no clock. TLS 1.2 sessions never get
//! here; rustls runs them from start to end.

use std::io::IoSlice;

use bytes::BytesMut;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, Error, ExtractedSecrets, HandshakeType, InvalidMessage,
    PeerMisbehaved, SupportedCipherSuite,
};

use super::record::{CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE, HEADER_LEN};

/// Most plaintext one record carries.
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// Longest record body a peer may send: plaintext, the content type byte, padding and the tag
/// (RFC 8446 section 5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const TAG_LEN: usize = 16;
/// What sealing adds to a record's plaintext: header, content type byte, tag.
pub const RECORD_OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;
/// The legacy record version every TLS 1.3 record carries.
const LEGACY_VERSION: [u8; 2] = [3, 3];
/// Alert levels (RFC 8446 section 6).
const WARNING: u8 = 1;
const FATAL: u8 = 2;
/// Warning alerts a peer may send over a connection's life, and `KeyUpdate`s in a row without application
/// data: rustls' limits (BoringSSL's `kMaxWarningAlerts` and `kMaxKeyUpdates`).
const WARNINGS_ALLOWED: u8 = 4;
const KEY_UPDATES_ALLOWED: u8 = 32;
/// `KeyUpdate`'s `request_update` values.
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;

/// One direction's AEAD key, IV and next sequence number. `repr(C)` with the sequence number first: a
/// seal reads it, the IV and the key's first bytes from one cache line.
#[repr(C)]
struct Keys {
    seq: u64,
    iv: [u8; 12],
    key: LessSafeKey,
}

impl Keys {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Self, Error> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return Err(Error::General("traffic secrets for an unknown cipher".into())),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| Error::General("traffic key of the wrong length".into()))?;
        let iv: [u8; 12] =
            iv.as_ref().try_into().map_err(|_| Error::General("traffic IV of the wrong length".into()))?;
        Ok(Keys { key: LessSafeKey::new(key), iv, seq })
    }

    /// The nonce of the next record (RFC 8446 section 5.3), and the sequence number moved on.
    fn next_nonce(&mut self) -> Result<Nonce, Error> {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq = self.seq.checked_add(1).ok_or(Error::EncryptError)?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// What [`Traffic::open`] found, beyond the plaintext it appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Records were processed (possibly none); more may follow.
    More,
    /// The peer's `close_notify` arrived: nothing after it is read.
    PeerClosed,
}

/// A failure of the record layer: rustls' error (for the same metrics labels rustls' own failures get) and
/// the alert owed to the peer, if any (none after the peer's own fatal alert).
#[derive(Debug)]
pub struct Failure {
    /// What went wrong, as rustls would name it.
    pub error: Error,
    /// The alert to send, if one is owed.
    pub alert: Option<AlertDescription>,
}

impl Failure {
    fn new(error: Error, alert: AlertDescription) -> Self {
        Failure { error, alert: Some(alert) }
    }

    fn unexpected(got_type: ContentType) -> Self {
        Failure::new(
            Error::InappropriateMessage { expect_types: vec![ContentType::ApplicationData], got_type },
            AlertDescription::UnexpectedMessage,
        )
    }
}

/// An established TLS 1.3 session's record layer. See the module docs.
///
/// `repr(C)`, send side first: a fan-out turn touches only the first cache lines of a connection's
/// `Traffic` (rustls' part, for key updates, is last).
#[repr(C)]
pub struct Traffic {
    /// Records sealed under the current send key.
    tx_count: u64,
    /// Records sealed under one send key before it is refreshed.
    tx_limit: u64,
    warnings_left: u8,
    key_updates_left: u8,
    tx: Keys,
    rx: Keys,
    kernel: KernelConnection<ServerConnectionData>,
}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traffic").field("tx_seq", &self.tx.seq).field("rx_seq", &self.rx.seq).finish()
    }
}

impl Traffic {
    /// Takes over from rustls once the handshake is done, with the secrets and sequence numbers it handed
    /// over.
    pub fn new(secrets: ExtractedSecrets, kernel: KernelConnection<ServerConnectionData>) -> Result<Self, Error> {
        let tx_limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(suite) => suite.common.confidentiality_limit,
            _ => return Err(Error::General("herald's record layer is for TLS 1.3 only".into())),
        };
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        Ok(Traffic {
            tx_count: 0,
            tx_limit,
            warnings_left: WARNINGS_ALLOWED,
            key_updates_left: KEY_UPDATES_ALLOWED,
            tx: Keys::new(tx_seq, tx)?,
            rx: Keys::new(rx_seq, rx)?,
            kernel,
        })
    }

    /// Lowers the number of records sealed under one key before it is refreshed (tests reach the limit
    /// with it; the cipher suite's own limit is the default).
    #[cfg(test)]
    pub fn set_key_limit(&mut self, records: u64) {
        self.tx_limit = records;
    }

    /// The next sequence numbers (send, receive); for tests.
    #[cfg(test)]
    pub fn sequence(&self) -> (u64, u64) {
        (self.tx.seq, self.rx.seq)
    }

    /// Appends `slices` to `out` as application-data records of up to 16 KiB of plaintext each, gathering
    /// the plaintext straight behind each record header and sealing it in place.
    pub fn seal(&mut self, out: &mut Vec<u8>, slices: &[IoSlice<'_>]) -> Result<(), Error> {
        let total: usize = slices.iter().map(|s| s.len()).sum();
        out.reserve(total + total.div_ceil(MAX_PLAINTEXT) * RECORD_OVERHEAD);
        let mut parts = slices.iter().map(|s| &s[..]).filter(|s| !s.is_empty());
        let mut part: &[u8] = &[];
        let mut left = total;
        while left > 0 {
            let len = left.min(MAX_PLAINTEXT);
            self.seal_record(out, CONTENT_APPLICATION_DATA, len, |out| {
                let mut need = len;
                while need > 0 {
                    if part.is_empty() {
                        // `total` was summed from these slices, so they cannot run out first.
                        let Some(next) = parts.next() else { break };
                        part = next;
                    }
                    let take = need.min(part.len());
                    out.extend_from_slice(&part[..take]);
                    part = &part[take..];
                    need -= take;
                }
            })?;
            left -= len;
        }
        Ok(())
    }

    /// Appends our `close_notify`.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.alert(out, AlertDescription::CloseNotify)
    }

    /// Appends an alert record (fatal unless it is `close_notify`).
    pub fn alert(&mut self, out: &mut Vec<u8>, description: AlertDescription) -> Result<(), Error> {
        let level = match description {
            AlertDescription::CloseNotify => WARNING,
            _ => FATAL,
        };
        self.seal_record(out, CONTENT_ALERT, 2, |out| out.extend_from_slice(&[level, description.into()]))
    }

    /// Opens the complete records at the start of `input`, appending their application data to
    /// `plaintext`; records owed to the peer (a `KeyUpdate` it asked for) go to `out`. Returns how many
    /// bytes of `input` were used (a partial record at the end is left for the caller to keep) and whether
    /// the peer closed. On a failure the plaintext of the records before the bad one stays in `plaintext`.
    pub fn open(
        &mut self,
        input: &[u8],
        plaintext: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> (usize, Result<Opened, Failure>) {
        let mut used = 0;
        while let Some(header) = input.get(used..used + HEADER_LEN) {
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if header[0] != CONTENT_APPLICATION_DATA {
                return (used, Err(Failure::unexpected(ContentType::from(header[0]))));
            }
            if len > MAX_CIPHERTEXT {
                return (used, Err(Failure::new(Error::PeerSentOversizedRecord, AlertDescription::RecordOverflow)));
            }
            let Some(body) = input.get(used + HEADER_LEN..used + HEADER_LEN + len) else { break };
            let header: [u8; HEADER_LEN] = [header[0], header[1], header[2], header[3], header[4]];
            used += HEADER_LEN + len;
            match self.open_record(header, body, plaintext, out) {
                Ok(Opened::More) => {}
                Ok(Opened::PeerClosed) => return (used, Ok(Opened::PeerClosed)),
                Err(failure) => return (used, Err(failure)),
            }
        }
        (used, Ok(Opened::More))
    }

    /// One record: decrypted into `plaintext` in place, then kept (data) or taken back out (alerts,
    /// handshake messages) and acted on.
    fn open_record(
        &mut self,
        header: [u8; HEADER_LEN],
        body: &[u8],
        plaintext: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Result<Opened, Failure> {
        let decrypt_error = || Failure::new(Error::DecryptError, AlertDescription::BadRecordMac);
        let start = plaintext.len();
        plaintext.extend_from_slice(body);
        let nonce = self.rx.next_nonce().map_err(|_| decrypt_error())?;
        let opened = self.rx.key.open_in_place(nonce, Aad::from(header), &mut plaintext[start..]).map(|p| p.len());
        let Ok(opened) = opened else {
            plaintext.truncate(start);
            return Err(decrypt_error());
        };
        // The content type is the last byte that is not padding.
        let Some(end) = plaintext[start..start + opened].iter().rposition(|&b| b != 0) else {
            plaintext.truncate(start);
            return Err(Failure::new(
                Error::PeerMisbehaved(PeerMisbehaved::IllegalTlsInnerPlaintext),
                AlertDescription::UnexpectedMessage,
            ));
        };
        let content_type = plaintext[start + end];
        if end > MAX_PLAINTEXT {
            plaintext.truncate(start);
            return Err(Failure::new(Error::PeerSentOversizedRecord, AlertDescription::RecordOverflow));
        }
        if content_type == CONTENT_APPLICATION_DATA {
            plaintext.truncate(start + end);
            self.key_updates_left = KEY_UPDATES_ALLOWED;
            return Ok(Opened::More);
        }
        let content = plaintext.split_off(start);
        let content = &content[..end];
        match content_type {
            CONTENT_ALERT => self.peer_alert(content),
            CONTENT_HANDSHAKE => self.peer_handshake(content, out).map(|()| Opened::More),
            other => Err(Failure::unexpected(ContentType::from(other))),
        }
    }

    /// An alert from the peer, handled as rustls handles one in TLS 1.3.
    fn peer_alert(&mut self, content: &[u8]) -> Result<Opened, Failure> {
        let &[level, description] = content else {
            return Err(Failure::new(
                Error::InvalidMessage(InvalidMessage::MessageTooShort),
                AlertDescription::DecodeError,
            ));
        };
        let description = AlertDescription::from(description);
        let received = Error::AlertReceived(description);
        match (level, description) {
            (WARNING | FATAL, AlertDescription::CloseNotify) => Ok(Opened::PeerClosed),
            (WARNING, _) if self.warnings_left == 0 => Err(Failure::new(
                Error::PeerMisbehaved(PeerMisbehaved::TooManyWarningAlertsReceived),
                AlertDescription::UnexpectedMessage,
            )),
            (WARNING, AlertDescription::UserCanceled) => {
                self.warnings_left -= 1;
                Ok(Opened::More)
            }
            // TLS 1.3 has no other warnings.
            (WARNING, _) => Err(Failure::new(received, AlertDescription::DecodeError)),
            (FATAL, _) => Err(Failure { error: received, alert: None }),
            _ => Err(Failure::new(received, AlertDescription::IllegalParameter)),
        }
    }

    /// Handshake messages after the handshake: from a client only `KeyUpdate` is acceptable, alone in its
    /// record (no message may straddle a key change, and the new keys start at the next record).
    fn peer_handshake(&mut self, content: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
        let straddles = || {
            Failure::new(
                Error::PeerMisbehaved(PeerMisbehaved::KeyEpochWithPendingFragment),
                AlertDescription::UnexpectedMessage,
            )
        };
        let Some(&kind) = content.first() else { return Err(straddles()) };
        if HandshakeType::from(kind) != HandshakeType::KeyUpdate {
            return Err(Failure::new(
                Error::InappropriateHandshakeMessage {
                    expect_types: vec![HandshakeType::KeyUpdate],
                    got_type: HandshakeType::from(kind),
                },
                AlertDescription::UnexpectedMessage,
            ));
        }
        let request = match content {
            [_, 0, 0, 1, request @ (UPDATE_NOT_REQUESTED | UPDATE_REQUESTED)] => *request,
            [_, 0, 0, 1, _] => {
                return Err(Failure::new(
                    Error::InvalidMessage(InvalidMessage::InvalidKeyUpdate),
                    AlertDescription::DecodeError,
                ))
            }
            // Cut short, longer than one byte, or followed by more.
            _ => return Err(straddles()),
        };
        if self.key_updates_left == 0 {
            return Err(Failure::new(
                Error::PeerMisbehaved(PeerMisbehaved::TooManyKeyUpdateRequests),
                AlertDescription::UnexpectedMessage,
            ));
        }
        self.key_updates_left -= 1;
        let internal = |error: Error| Failure::new(error, AlertDescription::InternalError);
        let (seq, secrets) = self.kernel.update_rx_secret().map_err(internal)?;
        self.rx = Keys::new(seq, secrets).map_err(internal)?;
        if request == UPDATE_REQUESTED {
            self.update_tx(out).map_err(internal)?;
        }
        Ok(())
    }

    /// Sends a `KeyUpdate` (not asking the peer for one back) under the current send key, then moves to the
    /// next one.
    fn update_tx(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let message = [u8::from(HandshakeType::KeyUpdate), 0, 0, 1, UPDATE_NOT_REQUESTED];
        self.seal_one(out, CONTENT_HANDSHAKE, message.len(), |out| out.extend_from_slice(&message))?;
        let (seq, secrets) = self.kernel.update_tx_secret()?;
        self.tx = Keys::new(seq, secrets)?;
        self.tx_count = 0;
        Ok(())
    }

    /// Seals one record, refreshing the send key first if it has sealed its limit.
    fn seal_record(
        &mut self,
        out: &mut Vec<u8>,
        content_type: u8,
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Error> {
        if self.tx_count >= self.tx_limit {
            self.update_tx(out)?;
        }
        self.seal_one(out, content_type, len, fill)
    }

    /// Appends one record: the header, `len` bytes of plaintext written by `fill`, the content type, sealed
    /// in place, then the tag.
    fn seal_one(
        &mut self,
        out: &mut Vec<u8>,
        content_type: u8,
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Error> {
        let body_len = len + 1 + TAG_LEN;
        let wire_len = u16::try_from(body_len).map_err(|_| Error::EncryptError)?;
        let header = [
            CONTENT_APPLICATION_DATA,
            LEGACY_VERSION[0],
            LEGACY_VERSION[1],
            wire_len.to_be_bytes()[0],
            wire_len.to_be_bytes()[1],
        ];
        let start = out.len();
        out.reserve(HEADER_LEN + body_len);
        out.extend_from_slice(&header);
        fill(out);
        debug_assert_eq!(out.len(), start + HEADER_LEN + len, "fill wrote the promised length");
        out.push(content_type);
        let nonce = match self.tx.next_nonce() {
            Ok(nonce) => nonce,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        match self.tx.key.seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start + HEADER_LEN..]) {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                self.tx_count += 1;
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(Error::EncryptError)
            }
        }
    }
}
