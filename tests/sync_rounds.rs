//! Reliable sync: 40 rounds between two real git-annex repositories, the
//! serving side under `p2p-annex serve`. Both repositories commit every
//! round and content goes both ways; no command may hang (each runs under a
//! deadline) or fail, and at the end every file is everywhere and fsck is
//! clean. Without serve's `git` shim, git-annex's relay race (see
//! doc/upstream/connectdone-race.md) hangs about one first fetch in three
//! and fails about one push in ten: 40 rounds would not pass.
//!
//! Run them alone with `cargo test --test tests sync_rounds -- --nocapture`
//! (each prints how long its rounds took).

use std::time::{Duration, Instant};

use crate::e2e_annex::{Net, enable, single_address};
use crate::support::annex::{Env, Outcome, Repo, pseudo_random};

const ROUNDS: usize = 40;

/// One `git annex sync --content` of two small files takes 2 to 4 s here; a
/// hung one never ends.
const SYNC_DEADLINE: Duration = Duration::from_secs(60);

/// A fetch or push of one commit takes well under a second.
const GIT_DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn forty_rounds_of_annex_sync_over_tcp() {
    annex_sync_rounds("rounds-sync-tcp", Net::Tcp("127.0.0.1"));
}

#[test]
fn forty_rounds_of_annex_sync_over_unix_sockets() {
    annex_sync_rounds("rounds-sync-unix", Net::UnixSockets);
}

#[test]
fn forty_rounds_of_git_fetch_and_push_over_tcp() {
    let net = Net::Tcp("127.0.0.1");
    let env = Env::new("rounds-git-tcp");
    let (a, b, served) = pair(&env, net);
    let start = Instant::now();
    for round in 0..ROUNDS {
        commit_text(&a, &format!("a/{round:02}.txt"), round);
        commit_text(&b, &format!("b/{round:02}.txt"), round);
        let fetched = b
            .cmd("git", &["fetch", "-q", "peerA"])
            .deadline(GIT_DEADLINE)
            .run();
        must(&fetched, round);
        b.git(&["merge", "-q", "--no-edit", "peerA/main"]);
        let pushed = b
            .cmd("git", &["push", "-q", "peerA", "main:from-b"])
            .deadline(GIT_DEADLINE)
            .run();
        must(&pushed, round);
    }
    let took = start.elapsed();
    assert_eq!(
        a.rev_parse("from-b"),
        b.rev_parse("main"),
        "A's from-b after the last push"
    );
    a.git(&["merge", "-q", "--ff-only", "from-b"]);
    for repo in [&a, &b] {
        for round in 0..ROUNDS {
            for side in ["a", "b"] {
                let file = format!("{side}/{round:02}.txt");
                assert_eq!(
                    repo.read(&file),
                    text(&file, round),
                    "{file} in {}",
                    repo.path().display()
                );
            }
        }
        repo.git(&["fsck", "--no-progress", "--strict"]);
    }
    eprintln!(
        "sync rounds: {ROUNDS} rounds of git fetch + git push over tcp under serve: {took:.1?}"
    );
    drop(served);
    env.assert_no_leftover_processes();
}

/// A serves `net` under `p2p-annex serve`; B commits, A commits, B runs
/// `git annex sync --content peerA`: A's file comes to B, B's goes to A.
fn annex_sync_rounds(tag: &str, net: Net) {
    let env = Env::new(tag);
    let (a, b, served) = pair(&env, net);
    let start = Instant::now();
    for round in 0..ROUNDS {
        a.write(&format!("a/{round:02}.bin"), &content("a", round));
        a.add_and_commit(
            &[&format!("a/{round:02}.bin")],
            &format!("A, round {round}"),
        );
        b.write(&format!("b/{round:02}.bin"), &content("b", round));
        b.add_and_commit(
            &[&format!("b/{round:02}.bin")],
            &format!("B, round {round}"),
        );
        let synced = b
            .annex_cmd(&["sync", "--content", "peerA"])
            .deadline(SYNC_DEADLINE)
            .run();
        must(&synced, round);
    }
    let took = start.elapsed();
    // B pushed its branches to A; a local sync takes them in (git-annex
    // pushes to A's checked-out main or to synced/main, as it can).
    a.annex(&["sync", "--quiet"]);
    for repo in [&a, &b] {
        for round in 0..ROUNDS {
            for side in ["a", "b"] {
                let file = format!("{side}/{round:02}.bin");
                assert!(
                    repo.read(&file) == content(side, round),
                    "{file} in {} is missing or differs",
                    repo.path().display()
                );
            }
        }
        repo.annex(&["fsck", "--quiet"]);
    }
    eprintln!(
        "sync rounds: {ROUNDS} rounds of git annex sync --content over {} under serve: {took:.1?}",
        match net {
            Net::Tcp(_) => "tcp",
            _ => "unix-sockets",
        }
    );
    drop(served);
    env.assert_no_leftover_processes();
}

/// A with one file, serving `net` under serve; B linked to it as peerA,
/// with A's history (one fetch, no retry: serve is there so that it does
/// not hang).
fn pair<'e>(env: &'e Env, net: Net) -> (Repo<'e>, Repo<'e>, crate::support::annex::Background<'e>) {
    let a = env.repo("a");
    a.write("start.txt", b"from A\n");
    a.add_and_commit(&["start.txt"], "start");
    enable(&a, net);
    let served = a.serve();
    let b = env.repo("b");
    b.link("peerA", &single_address(&a, net));
    let fetched = b
        .cmd("git", &["fetch", "-q", "peerA"])
        .deadline(GIT_DEADLINE)
        .run();
    must(&fetched, 0);
    b.annex(&["merge"]);
    b.git(&["merge", "-q", "--ff-only", "peerA/main"]);
    (a, b, served)
}

/// No hang (a deadline passed shows as no exit status), no failure.
fn must(out: &Outcome, round: usize) {
    assert!(
        out.success(),
        "round {round}: {} (a hang here is git-annex's relay race getting through)",
        out.describe()
    );
}

fn content(side: &str, round: usize) -> Vec<u8> {
    let seed = if side == "a" { 1000 } else { 2000 } + round as u64;
    pseudo_random(seed, 4096 + round * 512)
}

fn text(file: &str, round: usize) -> Vec<u8> {
    format!("{file}: round {round}\n").into_bytes()
}

fn commit_text(repo: &Repo, file: &str, round: usize) {
    repo.write(file, &text(file, round));
    repo.git(&["add", "--", file]);
    repo.git(&["commit", "-q", "-m", file]);
}
