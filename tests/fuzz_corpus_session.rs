//! Replays the checked-in corpora of the session fuzz targets
//! (`fuzz/corpus/{prekey_bundle_decode,device_list_update,session_receive,state_restore}/*`)
//! through the same checks the cargo-fuzz targets run (STYLE.md C12), without libFuzzer,
//! and pins as regression tests the three session-layer bugs found (by reading the code)
//! while writing `state_restore`.
//!
//! The checks live in `fuzz/src/session_checks.rs`, shared with the fuzz targets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/session_checks.rs"]
mod session_checks;

#[macro_use]
#[path = "common/corpus.rs"]
mod corpus;

use std::panic::{AssertUnwindSafe, catch_unwind};

use kogge::envelope::{Content, Text, UnverifiedEnvelope};
use kogge::session::{Account, SessionError};

fn run_all<'a>(target: &str, inputs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> usize {
    corpus::run_all(session_checks::TARGETS, target, inputs)
}

corpus_tests!(
    session_checks::TARGETS;
    prekey_bundle_decode,
    device_list_update,
    session_receive,
    state_restore,
);

/// The generated seeds (what `gen_session_corpus` writes) pass their checks too, so the
/// generator cannot drift from the checks.
#[test]
fn generated_seeds_pass() {
    let seeds = session_checks::seeds();
    for (target, _) in session_checks::TARGETS {
        let count = run_all(
            target,
            seeds
                .iter()
                .filter(|(t, _, _)| t == target)
                .map(|(_, n, d)| (n.as_str(), d.as_slice())),
        );
        assert!(count > 0, "no seeds for {target}");
    }
}

/// The honest envelopes of the fuzz world decrypt (or fail) on Bob's base state as
/// designed, so `session_receive` reaches every receive path: a skipped key, a new DH
/// chain (with and without a gap), setups with and without a one-time prekey, one-shot
/// sealing, a replay, an unknown sender, a copy for another device.
#[test]
fn fuzz_world_is_as_designed() {
    let w = session_checks::world();
    let codes: Vec<(&str, &str)> = w
        .honest
        .iter()
        .map(|h| {
            (
                h.name,
                h.expected
                    .as_ref()
                    .map_or_else(SessionError::code, |_| "ok"),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("alice-a2-skipped-key", "ok"),
            ("alice-a4-new-dh-chain", "ok"),
            ("alice-a5-new-dh-chain-gap", "ok"),
            ("carol-c1-setup-one-time-prekey", "ok"),
            ("carol-c2-setup-one-time-prekey-n1", "ok"),
            ("dave-d1-setup-no-one-time-prekey", "ok"),
            ("alice-one-shot", "ok"),
            ("alice-a1-already-received", "replay"),
            ("eve-unknown-sender", "unknown_sender"),
            ("bob-r1-to-alice", "wrong_recipient"),
        ]
    );
    // Every accepted one decrypts to what was sealed.
    for h in &w.honest {
        if let Ok(r) = &h.expected {
            assert_eq!(r.content, h.content, "{}", h.name);
        }
    }
    // Bob's base state is small (few one-time prekeys) and saves deterministically.
    let bob =
        Account::restore(&w.bob_blob, &session_checks::storage_key()).expect("base state restores");
    assert_eq!(bob.prekeys().one_time_count(), 4);
    assert_eq!(session_checks::save(&bob), w.bob_blob);
}

/// The account a `state_restore` mode-1 input (`[1, flags, plaintext..]`) restores.
fn restore_input(input: &[u8]) -> Account {
    let blob = session_checks::seal_plaintext(&input[2..]);
    Account::restore(&blob, &session_checks::storage_key()).expect("the reproducer restores")
}

/// Regression 1 (src/session/prekeys.rs, `PrekeyStore::replenish`): once the prekey id
/// counter saturated at `u32::MAX` before the one-time pool was full, `replenish` kept
/// re-inserting id `u32::MAX` and never returned. `Account::restore` accepts such a
/// counter (state.proto allows `next_id = 2^32 - 1`); prekey ids are now checked.
#[test]
fn replenish_with_saturated_counter_returns() {
    let mut account = restore_input(&session_checks::saturated_counter_input());
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        account.rotate_prekeys(session_checks::NOW, &mut session_checks::ScriptedRng(7));
        account.replenish_prekeys(session_checks::NOW, &mut session_checks::ScriptedRng(8));
        let _ = done.send(account.prekeys().one_time_count());
    });
    let count = finished
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("replenish_prekeys did not return within 20 s");
    assert!(count <= kogge::limits::MAX_ONE_TIME_PREKEYS);
}

/// Regression 2 (src/session/account.rs, `Account::encrypt`: `session.send_seq += 1`):
/// a restored session whose `send_seq` was `u64::MAX` overflowed on the next send (a
/// panic with overflow checks; otherwise the message carried sequence 0, which its
/// receiver refuses). Now `chain_exhausted`.
#[test]
fn encrypt_after_restoring_a_maximal_send_seq_does_not_overflow() {
    let mut account = restore_input(&session_checks::send_seq_max_input());
    let alice = session_checks::world().lists[0].1.address().clone();
    let content = Content::Text(Text::plain("x"));
    let sent = catch_unwind(AssertUnwindSafe(|| {
        account.encrypt(
            &alice,
            &content,
            session_checks::NOW,
            &mut session_checks::ScriptedRng(1),
        )
    }))
    .expect("encrypt panicked");
    if let Ok(sent) = sent {
        for e in &sent.envelopes {
            UnverifiedEnvelope::decode(e.envelope.clone())
                .expect("an encrypted envelope is refused by its receiver");
        }
    }
}

/// Regression 3 (src/session/ratchet.rs, `Ratchet::commit`: `self.next_order += 1`): a
/// restored ratchet whose `next_order` was `u64::MAX` overflowed when a receive stored
/// a skipped key (a panic with overflow checks; otherwise the counter wrapped to 0,
/// below the stored key's order, and the next save no longer restored). Now the orders
/// are renumbered.
#[test]
fn receive_after_restoring_a_maximal_next_order_does_not_overflow() {
    let mut account = restore_input(&session_checks::next_order_max_input());
    let a5 = session_checks::world()
        .honest
        .iter()
        .find(|h| h.name == "alice-a5-new-dh-chain-gap")
        .unwrap();
    let received = catch_unwind(AssertUnwindSafe(|| {
        account.decrypt(
            a5.bytes.clone(),
            session_checks::NOW,
            &mut session_checks::ScriptedRng(1),
        )
    }))
    .expect("decrypt panicked");
    assert_eq!(received.expect("a5 decrypts").content, a5.content);
    Account::restore(
        &session_checks::save(&account),
        &session_checks::storage_key(),
    )
    .expect("the state after the receive does not restore");
}
