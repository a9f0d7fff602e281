use super::*;

fn answer(values: &[&str]) -> Option<(Agreement, String)> {
    negotiate(values.iter().copied(), 15)
}

fn bits(values: &[&str]) -> Option<u8> {
    answer(values).map(|(a, _)| a.server_window_bits)
}

#[test]
fn a_bare_offer_gets_both_no_context_takeover_parameters() {
    let (agreement, value) = answer(&["permessage-deflate"]).expect("accepted");
    assert_eq!(agreement, Agreement { server_window_bits: 15 });
    assert_eq!(value, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
}

#[test]
fn the_browser_offer_is_accepted_without_answering_client_max_window_bits() {
    let (_, value) = answer(&["permessage-deflate; client_max_window_bits"]).expect("accepted");
    assert_eq!(value, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
}

#[test]
fn server_max_window_bits_is_honoured_and_answered() {
    let (agreement, value) = answer(&["permessage-deflate; server_max_window_bits=10"]).expect("accepted");
    assert_eq!(agreement.server_window_bits, 10);
    assert!(value.ends_with("; server_max_window_bits=10"), "{value}");
    // The configured window is the most the server uses, and the answer says so.
    let (agreement, value) = negotiate(["permessage-deflate; server_max_window_bits=15"], 12).expect("accepted");
    assert_eq!(agreement.server_window_bits, 12);
    assert!(value.ends_with("; server_max_window_bits=12"), "{value}");
}

#[test]
fn a_quoted_window_value_is_read_as_its_token() {
    assert_eq!(bits(&["permessage-deflate; server_max_window_bits=\"11\""]), Some(11));
}

#[test]
fn an_eight_bit_server_window_is_declined_since_zlib_cannot_make_one() {
    assert_eq!(bits(&["permessage-deflate; server_max_window_bits=8"]), None);
}

#[test]
fn invalid_window_values_decline_the_offer() {
    for bad in ["7", "16", "09", "010", "", "x", "1 0", "\"\""] {
        let offer = format!("permessage-deflate; server_max_window_bits={bad}");
        assert_eq!(bits(&[&offer]), None, "{offer}");
        let offer = format!("permessage-deflate; client_max_window_bits={bad}");
        assert_eq!(bits(&[&offer]), None, "{offer}");
    }
    // server_max_window_bits needs a value in an offer.
    assert_eq!(bits(&["permessage-deflate; server_max_window_bits"]), None);
}

#[test]
fn a_value_on_a_no_context_takeover_parameter_declines_the_offer() {
    assert_eq!(bits(&["permessage-deflate; server_no_context_takeover=1"]), None);
    assert_eq!(bits(&["permessage-deflate; client_no_context_takeover=true"]), None);
}

#[test]
fn repeated_parameters_decline_the_offer() {
    for offer in [
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
    ] {
        assert_eq!(bits(&[offer]), None, "{offer}");
    }
}

#[test]
fn an_unknown_parameter_declines_the_offer() {
    assert_eq!(bits(&["permessage-deflate; mux"]), None);
}

#[test]
fn the_first_acceptable_offer_wins_across_lists_and_headers() {
    // Declined first offer, then a good one in the same header.
    let header = "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12";
    assert_eq!(bits(&[header]), Some(12));
    // Other extensions are skipped; offers in a later header count too.
    assert_eq!(bits(&["x-webkit-deflate-frame", "permessage-deflate; server_max_window_bits=9"]), Some(9));
    // Autobahn 13.7's three offers: the first is taken.
    let autobahn = "permessage-deflate; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits, \
                    permessage-deflate; client_no_context_takeover; client_max_window_bits, \
                    permessage-deflate; client_max_window_bits";
    assert_eq!(bits(&[autobahn]), Some(9));
}

#[test]
fn names_and_parameters_are_case_insensitive_and_whitespace_tolerant() {
    assert_eq!(bits(&["  Permessage-Deflate ;SERVER_MAX_WINDOW_BITS = 13 "]), Some(13));
}

#[test]
fn no_offer_or_only_other_extensions_means_no_compression() {
    assert_eq!(bits(&[]), None);
    assert_eq!(bits(&["foo, bar; baz=1"]), None);
}

#[test]
fn a_comma_inside_a_quoted_value_does_not_split_the_offer() {
    // The quoted value is not a token, so that offer is declined as a whole rather than split in two.
    assert_eq!(bits(&["permessage-deflate; server_max_window_bits=\"10,permessage-deflate\""]), None);
}

fn round_trip(payload: &[u8], bits: u8) {
    let mut c = Compressor::new(6, bits);
    let mut out = Vec::new();
    c.compress(payload, &mut out);
    assert!(!out.ends_with(&TAIL), "the sync-flush tail is stripped");
    assert_eq!(Inflater::new().inflate(&out, 1 << 30).expect("inflates"), payload);
}

#[test]
fn messages_round_trip_at_every_window_size() {
    let json: Vec<u8> =
        (0..200).flat_map(|i| format!("{{\"id\":{i},\"price\":{},\"sym\":\"ABC\"}}", i * 7).into_bytes()).collect();
    for bits in MIN_WINDOW_BITS..=MAX_WINDOW_BITS {
        round_trip(&json, bits);
        round_trip(b"", bits);
        round_trip(b"x", bits);
    }
}

#[test]
fn the_empty_message_compresses_to_a_single_zero_octet() {
    // RFC 7692 section 7.2.3.6.
    let mut out = Vec::new();
    Compressor::new(6, 15).compress(b"", &mut out);
    assert_eq!(out, [0x00]);
}

#[test]
fn each_message_compresses_the_same_whatever_came_before() {
    let mut c = Compressor::new(6, 15);
    let (mut first, mut again) = (Vec::new(), Vec::new());
    c.compress(b"hello hello hello hello", &mut first);
    c.compress(b"something else entirely, hello", &mut Vec::new());
    c.compress(b"hello hello hello hello", &mut again);
    assert_eq!(first, again);
}

#[test]
fn rfc_7692_example_hello_inflates() {
    // Section 7.2.3.1: "Hello" compressed without context takeover.
    assert_eq!(Inflater::new().inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100).expect("inflates"), b"Hello");
    // 7.2.3.3: uncompressed (stored) block.
    let stored = [0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00];
    assert_eq!(Inflater::new().inflate(&stored, 100).expect("inflates"), b"Hello");
}

#[test]
fn inflating_past_the_limit_stops_with_too_large_and_bounded_output() {
    // A bomb: 64 MiB of zeros compresses to about 64 KiB.
    let mut bomb = Vec::new();
    Compressor::new(9, 15).compress(&vec![0u8; 64 << 20], &mut bomb);
    assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
    let mut inflater = Inflater::new();
    assert_eq!(inflater.inflate(&bomb, 1 << 20), Err(InflateError::TooLarge { max: 1 << 20 }));
    // Exactly at the limit is fine.
    let mut exact = Vec::new();
    Compressor::new(6, 15).compress(&[7u8; 1000], &mut exact);
    assert_eq!(inflater.inflate(&exact, 1000).expect("at the limit").len(), 1000);
    assert_eq!(inflater.inflate(&exact, 999), Err(InflateError::TooLarge { max: 999 }));
}

#[test]
fn garbage_is_invalid_and_the_inflater_is_usable_after() {
    let mut inflater = Inflater::new();
    assert_eq!(inflater.inflate(&[0xff, 0xff, 0xff, 0xff], 100), Err(InflateError::Invalid));
    assert_eq!(inflater.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100).expect("inflates"), b"Hello");
}

#[test]
fn a_back_reference_into_a_previous_message_is_invalid_without_context_takeover() {
    // A client that kept its context refers to the last message; the reset inflater cannot resolve that.
    let mut raw = Compress::new_with_window_bits(Compression::new(6), false, 15);
    let mut first = Vec::with_capacity(256);
    raw.compress_vec(b"abcdefghijabcdefghij", &mut first, FlushCompress::Sync).expect("compress");
    let mut second = Vec::with_capacity(256);
    raw.compress_vec(b"abcdefghij", &mut second, FlushCompress::Sync).expect("compress");
    second.truncate(second.len() - 4);
    assert_eq!(Inflater::new().inflate(&second, 100), Err(InflateError::Invalid));
}

#[test]
fn small_or_incompressible_messages_go_plain_in_a_batch() {
    let mut batch = Vec::new();
    let big = "{\"k\":\"value\"},".repeat(100);
    frame::write_frame(&mut batch, OpCode::Text, b"tiny");
    frame::write_frame(&mut batch, OpCode::Text, big.as_bytes());
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..600)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    frame::write_frame(&mut batch, OpCode::Binary, &noise);
    let mut stats = BatchStats::default();
    let out = compress_batch(&batch, &mut Compressor::new(6, 15), 64, &mut stats);
    assert_eq!((stats.compressed, stats.plain), (1, 2));
    assert_eq!(stats.bytes_before, big.len() as u64);
    // Plain "tiny" first, unchanged; then the compressed frame with RSV1.
    assert_eq!(&out[..6], &batch[..6]);
    assert_eq!(out[6], 0x80 | 0x40 | 0x1);
    let (_, header, len) = parse_server_frame(&out[6..]).expect("frame");
    let body = &out[6 + header..6 + header + len];
    assert_eq!(Inflater::new().inflate(body, 1 << 20).expect("inflates"), big.as_bytes());
    // The noise goes plain, byte for byte.
    assert!(out.ends_with(&batch[batch.len() - noise.len() - 4..]));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn no_header_value_panics_and_an_answer_always_holds_both_no_context_takeover(
            value in "[ -~]{0,120}",
            bits in 9u8..=15,
        ) {
            if let Some((agreement, answer)) = negotiate([value.as_str()], bits) {
                prop_assert!((MIN_WINDOW_BITS..=bits).contains(&agreement.server_window_bits));
                prop_assert!(answer.starts_with(
                    "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
                ));
            }
        }

        #[test]
        fn no_compressed_input_panics_and_output_stays_within_the_limit(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            max in 0u64..100_000,
        ) {
            if let Ok(out) = Inflater::new().inflate(&data, max) {
                prop_assert!(out.len() as u64 <= max);
            }
        }

        #[test]
        fn any_message_round_trips(data in proptest::collection::vec(any::<u8>(), 0..5000), bits in 9u8..=15) {
            let mut out = Vec::new();
            Compressor::new(6, bits).compress(&data, &mut out);
            prop_assert_eq!(Inflater::new().inflate(&out, data.len() as u64).expect("inflates"), data);
        }
    }
}
