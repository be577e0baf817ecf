//! The `kogge` command-line client against two real `kogge-provider` processes on
//! loopback, each with its own folder: alice@one.example (passphrase) and bob@two.example
//! (key file) register, message each other both ways, Bob links a second device that then
//! receives too and sends and is then removed, Alice verifies Bob's safety number (and a wrong one is refused)
//! and then refuses to send once Bob's identity key changes, the wrong passphrase and a
//! tampered state file are refused, and `inspect` decodes an envelope and refuses garbage. Every message must be printed by
//! `listen` exactly once. Every command is bounded by its own `--timeout`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The test bounds its waits in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PROVIDER: &str = env!("CARGO_BIN_EXE_kogge-provider");
const KOGGE: &str = env!("CARGO_BIN_EXE_kogge");
const WAIT: Duration = Duration::from_secs(30);

/// A `kogge-provider` process in its own folder.
struct Provider {
    name: &'static str,
    dir: PathBuf,
    line: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Provider {
    fn init(root: &Path, name: &'static str) -> Self {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = root.join(name);
        let out = Command::new(PROVIDER)
            .args(["init", "--open-registration", "--domain"])
            .arg(format!("{name}.example"))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--dir")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let log = dir.join("provider.log");
        Self {
            name,
            dir,
            line,
            child: None,
            log,
        }
    }

    fn add_peer(&self, other: &Provider) {
        let path = self.dir.join("directory.txt");
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(&other.line);
        text.push('\n');
        fs::write(path, text).unwrap();
    }

    fn start(&mut self) {
        let child = Command::new(PROVIDER)
            .arg("run")
            .arg("--config")
            .arg(self.dir.join("kogge-provider.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&self.log).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        while !fs::read_to_string(&self.log)
            .unwrap_or_default()
            .contains("kogge-provider running")
        {
            assert!(started.elapsed() < WAIT, "{} did not start", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Provider {
    /// Kills the provider, deletes its database (its users are forgotten; its key stays)
    /// and starts it again: what a provider that resets an account, or lies, looks like.
    fn restart_empty(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        fs::remove_dir_all(self.dir.join("data")).unwrap();
        self.start();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- {} log (last 30 lines)", self.name);
            for line in text.lines().rev().take(30).collect::<Vec<_>>().iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// How a data directory is unlocked.
enum Key<'a> {
    Passphrase(&'a str),
    File(&'a Path),
}

/// One device's data directory.
struct Dev<'a> {
    dir: PathBuf,
    key: Key<'a>,
}

impl Dev<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KOGGE);
        c.arg("--dir").arg(&self.dir);
        c.env_remove("KOGGE_PASSPHRASE")
            .env_remove("KOGGE_KEY_FILE");
        c.env_remove("KOGGE_DIR").env("RUST_LOG", "warn");
        match &self.key {
            Key::Passphrase(p) => {
                c.env("KOGGE_PASSPHRASE", p);
            }
            Key::File(f) => {
                c.arg("--key-file").arg(f);
            }
        }
        c.args(args).stdin(Stdio::null());
        c
    }

    /// Runs a command that must succeed; returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "kogge {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail; returns its standard error.
    fn fails(&self, args: &[&str]) -> String {
        let out: Output = self.cmd(args).output().unwrap();
        assert!(
            !out.status.success(),
            "kogge {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

/// The 60 digits after "safety number of ...:".
fn safety_number(out: &str) -> String {
    let line = out
        .lines()
        .skip_while(|l| !l.starts_with("safety number of"))
        .nth(1)
        .expect("a safety number line");
    line.chars().filter(char::is_ascii_digit).collect()
}

/// Lines of `listen` output that are messages containing `text`.
fn messages_with(out: &str, text: &str) -> usize {
    out.lines()
        .filter(|l| l.contains(" message from ") && l.ends_with(&format!(": {text}")))
        .count()
}

#[test]
fn cli_end_to_end_across_two_providers() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut one = Provider::init(root, "one");
    let mut two = Provider::init(root, "two");
    one.add_peer(&two);
    two.add_peer(&one);
    one.start();
    two.start();

    let alice = Dev {
        dir: root.join("alice"),
        key: Key::Passphrase("alice's long passphrase"),
    };
    let bob_key = root.join("bob.key");
    let bob = Dev {
        dir: root.join("bob"),
        key: Key::File(&bob_key),
    };
    let bob2 = Dev {
        dir: root.join("bob2"),
        key: Key::Passphrase("bob's second device"),
    };

    // Identities and registration; the directory file gives the provider.
    let directory = root.join("directory.txt");
    fs::write(&directory, format!("{}\n{}\n", one.line, two.line)).unwrap();
    let out = alice.ok(&[
        "init",
        "--address",
        "alice@one.example",
        "--directory",
        directory.to_str().unwrap(),
    ]);
    assert!(out.contains("created alice@one.example"), "{out}");
    bob.ok(&[
        "init",
        "--address",
        "bob@two.example",
        "--provider",
        &two.line,
    ]);
    assert!(
        alice
            .ok(&["register"])
            .contains("registered alice@one.example")
    );
    assert!(bob.ok(&["register"]).contains("registered bob@two.example"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [
            bob_key.clone(),
            bob.dir.join("state"),
            alice.dir.join("identity"),
        ] {
            let mode = fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} mode {mode:o}", f.display());
        }
    }
    // Nothing readable at rest.
    for f in ["state", "identity"] {
        let raw = fs::read(alice.dir.join(f)).unwrap();
        assert!(
            !raw.windows(5).any(|w| w == b"alice"),
            "{f} leaks the address"
        );
    }

    // Both ways across the two providers.
    let out = alice.ok(&["send", "bob@two.example", "hello bob", "--timeout", "30"]);
    assert!(out.contains("stored by the provider"), "{out}");
    let out = bob.ok(&["listen", "--count", "1", "--timeout", "30"]);
    assert_eq!(messages_with(&out, "hello bob"), 1, "{out}");
    assert!(out.contains("message from alice@one.example"), "{out}");
    bob.ok(&["send", "alice@one.example", "hello alice"]);
    let out = alice.ok(&["listen", "--count", "1", "--timeout", "30"]);
    assert_eq!(messages_with(&out, "hello alice"), 1, "{out}");

    // Fingerprints and verification: both see the same safety number.
    let a_view = safety_number(&alice.ok(&["fingerprint", "bob@two.example"]));
    let b_view = safety_number(&bob.ok(&["fingerprint", "alice@one.example"]));
    assert_eq!(a_view.len(), 60);
    assert_eq!(a_view, b_view);
    let mut wrong = a_view.clone().into_bytes();
    wrong[0] = if wrong[0] == b'9' { b'0' } else { wrong[0] + 1 };
    let err = alice.fails(&[
        "verify",
        "bob@two.example",
        std::str::from_utf8(&wrong).unwrap(),
    ]);
    assert!(err.contains("does not match"), "{err}");
    assert!(
        alice
            .ok(&["verify", "bob@two.example", &a_view])
            .contains("verified")
    );
    let out = alice.ok(&["fingerprint", "bob@two.example"]);
    assert!(out.contains("status  verified"), "{out}");

    // Bob links a second device: invite, request, approve, finish.
    let invite = bob.ok(&["device", "invite"]).trim().to_owned();
    let request = bob2.ok(&["link", "request", &invite]).trim().to_owned();
    let approval = bob.ok(&["device", "approve", &request]).trim().to_owned();
    let out = bob2.ok(&["link", "finish", &approval]);
    assert!(
        out.contains("linked and registered bob@two.example"),
        "{out}"
    );
    let bob2_id = out.split_whitespace().last().unwrap().to_owned();
    let out = bob.ok(&["device", "list"]);
    assert!(out.starts_with("2 devices of bob@two.example"), "{out}");

    // A message to Bob reaches both devices, each exactly once.
    alice.ok(&["send", "bob@two.example", "to both of you"]);
    let out = bob.ok(&["listen", "--count", "1", "--timeout", "30"]);
    assert_eq!(messages_with(&out, "to both of you"), 1, "{out}");
    let out = bob2.ok(&["listen", "--count", "1", "--timeout", "30"]);
    assert_eq!(messages_with(&out, "to both of you"), 1, "{out}");
    // The new device sends; Alice gets it (from its device), Bob's first device a copy.
    bob2.ok(&["send", "alice@one.example", "from the new device"]);
    let out = alice.ok(&["listen", "--count", "1", "--timeout", "30"]);
    assert_eq!(messages_with(&out, "from the new device"), 1, "{out}");
    assert!(out.contains("(verified)"), "Alice verified Bob: {out}");
    let out = bob.ok(&["listen", "--count", "1", "--timeout", "30"]);
    assert_eq!(messages_with(&out, "from the new device"), 1, "{out}");
    assert!(
        out.contains("in conversation with alice@one.example"),
        "{out}"
    );

    // Nothing is shown twice: a further listen finds no message again.
    for dev in [&alice, &bob, &bob2] {
        let out = dev.ok(&["listen", "--timeout", "2"]);
        assert_eq!(
            out.lines().filter(|l| l.contains(" message from ")).count(),
            0,
            "{out}"
        );
    }

    // A group across the two providers: created by Alice (one.example orders it), every
    // device of every member gets each message once, each command a new process that
    // finds the group in its encrypted state.
    let out = alice.ok(&["group", "create", "--title", "shop", "bob@two.example"]);
    assert!(out.contains("created group"), "{out}");
    let group = out.split_whitespace().nth(2).unwrap().to_owned();
    assert_eq!(group.len(), 32, "{out}");
    let out = alice.ok(&["group", "send", &group, "hello group"]);
    assert!(out.contains("stored by the provider"), "{out}");
    for dev in [&bob, &bob2] {
        let out = dev.ok(&["listen", "--count", "1", "--timeout", "30"]);
        assert_eq!(messages_with(&out, "hello group"), 1, "{out}");
        assert!(
            out.contains(&format!("group {group} message from alice@one.example")),
            "{out}"
        );
    }
    let out = bob.ok(&["group", "list"]);
    assert!(
        out.contains("\"shop\"") && out.contains("alice@one.example  admin"),
        "{out}"
    );
    bob2.ok(&["group", "send", &group, "hi from bob's second device"]);
    for dev in [&alice, &bob] {
        let out = dev.ok(&["listen", "--count", "1", "--timeout", "30"]);
        assert_eq!(
            messages_with(&out, "hi from bob's second device"),
            1,
            "{out}"
        );
    }
    // Bob is removed: he learns of it, and what follows does not reach him.
    let out = alice.ok(&["group", "remove", &group, "bob@two.example"]);
    assert!(out.contains("epoch 1"), "{out}");
    alice.ok(&["group", "send", &group, "after bob"]);
    for dev in [&bob, &bob2] {
        let out = dev.ok(&["listen", "--timeout", "5"]);
        assert!(out.contains("removed bob@two.example"), "{out}");
        assert_eq!(messages_with(&out, "after bob"), 0, "{out}");
    }
    let err = bob.fails(&["group", "send", &group, "still here?"]);
    assert!(err.contains("is not a member of the group"), "{err}");

    // Bob removes the second device (lost): the provider refuses it, and a message to Bob
    // reaches the first device only.
    let out = bob.ok(&["device", "remove", &bob2_id]);
    assert!(out.contains("removed device"), "{out}");
    assert!(
        bob.ok(&["device", "list"])
            .starts_with("1 devices of bob@two.example")
    );
    let err = bob2.fails(&["listen", "--timeout", "5"]);
    assert!(
        err.contains("not on the user's current device list"),
        "{err}"
    );
    alice.ok(&["send", "bob@two.example", "only the first device now"]);
    let out = bob.ok(&["listen", "--count", "1", "--timeout", "30"]);
    assert_eq!(messages_with(&out, "only the first device now"), 1, "{out}");

    // Bob's account is reset at his provider and "bob@two.example" now has another
    // identity key. Alice verified the old one: her client refuses to seal to the new one.
    two.restart_empty();
    let new_bob = Dev {
        dir: root.join("new-bob"),
        key: Key::Passphrase("someone else"),
    };
    new_bob.ok(&[
        "init",
        "--address",
        "bob@two.example",
        "--provider",
        &two.line,
    ]);
    new_bob.ok(&["register"]);
    let err = alice.fails(&["send", "bob@two.example", "are you still you?"]);
    assert!(err.contains("identity_mismatch"), "{err}");
    let out = alice.ok(&["listen", "--timeout", "1"]);
    assert!(out.contains("identity-changed bob@two.example"), "{out}");
    let out = alice.ok(&["fingerprint", "bob@two.example"]);
    assert!(out.contains("CHANGED since you verified it"), "{out}");
    let out = new_bob.ok(&["listen", "--timeout", "1"]);
    assert_eq!(messages_with(&out, "are you still you?"), 0, "{out}");

    // The wrong passphrase is refused with its own error; so is a tampered state file.
    let intruder = Dev {
        dir: alice.dir.clone(),
        key: Key::Passphrase("not alice's passphrase"),
    };
    assert!(intruder.fails(&["whoami"]).contains("wrong passphrase"));
    let state = alice.dir.join("state");
    let mut raw = fs::read(&state).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x40;
    fs::write(&state, &raw).unwrap();
    assert!(alice.fails(&["whoami"]).contains("altered or damaged"));
    raw[mid] ^= 0x40;
    fs::write(&state, &raw).unwrap();
    assert!(alice.ok(&["whoami"]).contains("registered      yes"));

    // Inspect: an envelope from the test vectors, as hex on the command line and as a
    // binary file; garbage is refused with the decoder's error code.
    let vectors: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/envelopes.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let hex = vectors["positive"][0]["vector"]["envelope"]
        .as_str()
        .unwrap();
    let out = alice.ok(&["inspect", "--hex", hex]);
    for field in [
        "sender",
        "recipient",
        "message id",
        "signature",
        "alice@one.example",
    ] {
        assert!(out.contains(field), "{field}: {out}");
    }
    let file = root.join("envelope.bin");
    fs::write(&file, hex::decode(hex).unwrap()).unwrap();
    assert_eq!(alice.ok(&["inspect", file.to_str().unwrap()]), out);
    fs::write(&file, b"this is not an envelope").unwrap();
    let err = alice.fails(&["inspect", file.to_str().unwrap()]);
    assert!(err.contains("not a Kogge envelope"), "{err}");

    eprintln!("cli test took {:?}", started.elapsed());
}
