//! The `git` shim (p2p-annex invoked as `git`): every git command through
//! it behaves as the real git, upload-pack and receive-pack included, it
//! never runs itself, and it ends only once the service's output was read.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::{DEADLINE, Proc, TempDir, bin, random_bytes};

/// A directory holding `git` → the binary under test.
fn shim_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("make shim dir");
    std::os::unix::fs::symlink(bin(), dir.join("git")).expect("make git link");
    dir
}

/// The test's PATH with `dirs` in front.
fn path_with(dirs: &[&Path]) -> OsString {
    let rest = std::env::var_os("PATH").unwrap_or_default();
    let mut all: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    all.extend(std::env::split_paths(&rest));
    std::env::join_paths(all).expect("join PATH")
}

/// `git ARGS` found on `path` (the shim when its directory comes first),
/// with git config isolated from the machine's.
fn git(path: &OsString, home: &Path, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(cwd)
        .env("PATH", path)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .env_remove("GIT_DIR")
        .env_remove("P2P_ANNEX_GIT_SHIMS");
    cmd
}

/// Run with `stdin` fed, return (status, stdout bytes, stderr), bounded.
fn run(mut cmd: Command, stdin: &[u8]) -> (ExitStatus, Vec<u8>, String) {
    let mut proc = Proc::spawn(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut input = proc.child.stdin.take().expect("stdin");
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let mut out = proc.child.stdout.take().expect("stdout");
    let mut err = proc.child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let mut stderr = String::new();
    let _ = err.read_to_string(&mut stderr);
    let status = proc.expect_exit(DEADLINE);
    let _ = writer.join();
    (status, reader.join().expect("stdout reader"), stderr)
}

/// The same command through the shim and through the real git: the same
/// exit status, stdout (byte for byte) and stderr.
fn same_as_real(
    shim: &OsString,
    real: &OsString,
    home: &Path,
    cwd: &Path,
    args: &[&str],
    stdin: &[u8],
) -> Vec<u8> {
    let (s1, out1, err1) = run(git(shim, home, cwd, args), stdin);
    let (s2, out2, err2) = run(git(real, home, cwd, args), stdin);
    assert_eq!(
        s1.code(),
        s2.code(),
        "exit status of git {args:?}: shim {s1:?}, real {s2:?}\n{err1}"
    );
    assert!(
        out1 == out2,
        "stdout of git {args:?} differs ({} vs {} bytes)",
        out1.len(),
        out2.len()
    );
    assert_eq!(err1, err2, "stderr of git {args:?}");
    out1
}

struct Repo {
    _tmp: TempDir,
    home: PathBuf,
    repo: PathBuf,
    shim: OsString,
    real: OsString,
    shim_dir: PathBuf,
}

/// A repository with one commit, and PATHs with and without the shim.
fn setup(tag: &str) -> Repo {
    let tmp = TempDir::new(tag);
    let home = tmp.path().join("home");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::create_dir_all(&repo).expect("repo");
    let dir = shim_dir(tmp.path(), "shim");
    let shim = path_with(&[&dir]);
    let real = path_with(&[]);
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["commit", "-q", "--allow-empty", "-m", "one"],
    ] {
        let (s, _, e) = run(git(&real, &home, &repo, args), b"");
        assert!(s.success(), "git {args:?}: {e}");
    }
    Repo {
        home,
        repo,
        shim,
        real,
        shim_dir: dir,
        _tmp: tmp,
    }
}

#[test]
fn other_commands_behave_exactly_as_real_git() {
    let r = setup("shim-transparent");
    let (h, d) = (&r.home, &r.repo);
    same_as_real(&r.shim, &r.real, h, d, &["--version"], b"");
    same_as_real(
        &r.shim,
        &r.real,
        h,
        d,
        &["-C", ".", "--no-pager", "log", "--format=%s"],
        b"",
    );
    // Failures: an unknown command (1) and a bad revision (128), with their stderr.
    same_as_real(&r.shim, &r.real, h, d, &["no-such-command"], b"");
    same_as_real(
        &r.shim,
        &r.real,
        h,
        d,
        &["rev-parse", "--verify", "-q", "no-such-rev"],
        b"",
    );
    same_as_real(
        &r.shim,
        &r.real,
        h,
        d,
        &["cat-file", "-t", "0000000000000000000000000000000000000000"],
        b"",
    );
    // stdin in, a 6 MB blob out, byte for byte.
    let data = random_bytes(6 << 20, 12);
    let id = same_as_real(
        &r.shim,
        &r.real,
        h,
        d,
        &["hash-object", "-w", "--stdin"],
        &data,
    );
    let id = String::from_utf8(id).expect("object id");
    let out = same_as_real(
        &r.shim,
        &r.real,
        h,
        d,
        &["cat-file", "blob", id.trim()],
        b"",
    );
    assert!(out == data, "the blob read back through the shim differs");
}

#[test]
fn other_commands_are_the_real_git_process_signals_included() {
    let r = setup("shim-exec-signal");
    // hash-object waits for stdin: the process is git itself (exec), so
    // a signal to it ends git, and the status says so.
    let mut proc = Proc::spawn(
        git(&r.shim, &r.home, &r.repo, &["hash-object", "--stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let pid = proc.pid();
    let exe_is_git = crate::support::wait_until(DEADLINE, || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p != bin())
    });
    assert!(exe_is_git, "the shim did not exec git for hash-object");
    kill(pid, "TERM");
    let status = proc.expect_exit(DEADLINE);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
}

fn kill(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

#[test]
fn upload_pack_and_receive_pack_pass_output_and_status_through() {
    let r = setup("shim-services");
    let (h, d) = (&r.home, &r.repo);
    let repo = d.to_str().expect("utf-8 path");
    for service in ["upload-pack", "receive-pack"] {
        let out = same_as_real(
            &r.shim,
            &r.real,
            h,
            d,
            &[service, "--advertise-refs", repo],
            b"",
        );
        assert!(!out.is_empty(), "{service} advertised nothing");
        // Global options before the command, as git-annex passes them.
        same_as_real(
            &r.shim,
            &r.real,
            h,
            d,
            &[
                "--git-dir=.git",
                "--work-tree=.",
                "--literal-pathspecs",
                service,
                "--advertise-refs",
                ".",
            ],
            b"",
        );
        // A failure: exit 128 and git's message.
        same_as_real(&r.shim, &r.real, h, d, &[service, "/nonexistent/repo"], b"");
    }
    // Whole sessions through the shim: a clone (upload-pack) and a push
    // (receive-pack), with the shim named as the service program.
    let shim_git = r.shim_dir.join("git");
    let shim_git = shim_git.to_str().expect("utf-8 path");
    let clone = r.home.join("clone");
    let upload = format!("{shim_git} upload-pack");
    let (s, _, e) = run(
        git(
            &r.real,
            h,
            &r.home,
            &["clone", "-q", "--upload-pack", &upload, repo, "clone"],
        ),
        b"",
    );
    assert!(s.success(), "clone through the shim: {e}");
    let receive = format!("{shim_git} receive-pack");
    let (s, _, e) = run(
        git(
            &r.real,
            h,
            &clone,
            &["commit", "-q", "--allow-empty", "-m", "two"],
        ),
        b"",
    );
    assert!(s.success(), "{e}");
    let (s, _, e) = run(
        git(
            &r.real,
            h,
            &clone,
            &[
                "push",
                "-q",
                "--receive-pack",
                &receive,
                "origin",
                "main:pushed",
            ],
        ),
        b"",
    );
    assert!(s.success(), "push through the shim: {e}");
    let (_, a, _) = run(git(&r.real, h, &clone, &["rev-parse", "HEAD"]), b"");
    let (_, b, _) = run(git(&r.real, h, d, &["rev-parse", "pushed"]), b"");
    assert_eq!(a, b, "the pushed commit arrived");
}

#[test]
fn a_service_ends_only_once_its_output_was_read() {
    let r = setup("shim-drain");
    let repo = r.repo.to_str().expect("utf-8 path");
    let mut proc = advertise_refs_through_the_shim(&r, repo);
    // upload-pack is done at once; its advertisement sits in the pipe.
    // The shim must NOT end while nobody has read it.
    assert!(
        proc.wait_timeout(Duration::from_secs(1)).is_none(),
        "the shim ended while its output was still in the pipe"
    );
    let mut out = proc.child.stdout.take().expect("stdout");
    let mut advertisement = Vec::new();
    out.read_to_end(&mut advertisement)
        .expect("read the advertisement");
    assert!(!advertisement.is_empty());
    let status = proc.expect_exit(DEADLINE);
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_service_whose_output_is_never_read_still_ends() {
    let r = setup("shim-drain-bound");
    let repo = r.repo.to_str().expect("utf-8 path");
    let mut proc = advertise_refs_through_the_shim(&r, repo);
    let start = Instant::now();
    let status = proc.expect_exit(Duration::from_secs(40));
    assert!(status.success(), "{status:?}");
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "gave up waiting too early"
    );
}

#[test]
fn a_service_whose_reader_went_away_ends_at_once() {
    let r = setup("shim-drain-gone");
    let repo = r.repo.to_str().expect("utf-8 path");
    let mut proc = advertise_refs_through_the_shim(&r, repo);
    // The advertisement is written, then the reader closes its end unread
    // (git-annex does so when the peer is gone): nothing left to wait for.
    std::thread::sleep(Duration::from_millis(300));
    drop(proc.child.stdout.take());
    let start = Instant::now();
    let status = proc.expect_exit(DEADLINE);
    assert!(status.success(), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the shim waited {:?} for a reader that was gone",
        start.elapsed()
    );
}

#[test]
fn signals_reach_the_service_and_its_ending_comes_back() {
    let r = setup("shim-service-signal");
    let repo = r.repo.to_str().expect("utf-8 path");
    for (sig, num) in [
        ("TERM", libc::SIGTERM),
        ("INT", libc::SIGINT),
        ("HUP", libc::SIGHUP),
    ] {
        // upload-pack advertises, then waits for the client's wants on stdin.
        let mut proc = Proc::spawn(
            git(&r.shim, &r.home, &r.repo, &["upload-pack", repo])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        );
        let mut out = proc.child.stdout.take().expect("stdout");
        let mut buf = [0u8; 4];
        out.read_exact(&mut buf).expect("upload-pack's first bytes");
        let shim = proc.pid();
        let child = children(shim);
        assert_eq!(child.len(), 1, "the shim runs upload-pack as its child");
        kill(shim, sig);
        let status = proc.expect_exit(DEADLINE);
        assert_eq!(
            status.signal(),
            Some(num),
            "shim ending after SIG{sig}: {status:?}"
        );
        let gone = crate::support::wait_until(DEADLINE, || {
            !Path::new(&format!("/proc/{}", child[0])).exists()
        });
        assert!(gone, "upload-pack outlived the SIG{sig}");
    }
}

/// Child pids of `pid` (Linux /proc).
fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn no_real_git_is_a_clear_error_and_127() {
    let r = setup("shim-missing");
    let only_shim = std::env::join_paths([&r.shim_dir]).expect("PATH");
    for args in [&["--version"][..], &["upload-pack", "."]] {
        let (s, out, err) = run(git(&only_shim, &r.home, &r.repo, args), b"");
        assert_eq!(s.code(), Some(127), "git {args:?}: {s:?} {err}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("cannot find the real git"), "{err}");
    }
}

#[test]
fn never_runs_itself_or_another_shim() {
    let r = setup("shim-loops");
    let root = r.home.parent().expect("test dir").to_path_buf();
    // Two links to the binary (the same file), and a copy (another file).
    let second = shim_dir(&root, "shim2");
    let copy_dir = root.join("copy");
    std::fs::create_dir_all(&copy_dir).expect("copy dir");
    std::fs::copy(bin(), copy_dir.join("git")).expect("copy the binary");
    let alone = std::env::join_paths([&r.shim_dir, &second, &copy_dir, &r.shim_dir]).expect("PATH");
    let start = Instant::now();
    let (s, _, err) = run(git(&alone, &r.home, &r.repo, &["--version"]), b"");
    assert_eq!(s.code(), Some(127), "{s:?} {err}");
    assert!(err.contains("cannot find the real git"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    // With the real git after them, all three pass the command on.
    let rest = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![copy_dir.clone(), r.shim_dir.clone(), second.clone()];
    dirs.extend(std::env::split_paths(&rest));
    let chained = std::env::join_paths(dirs).expect("PATH");
    same_as_real(&chained, &r.real, &r.home, &r.repo, &["--version"], b"");
    let repo = r.repo.to_str().expect("utf-8 path");
    same_as_real(
        &chained,
        &r.real,
        &r.home,
        &r.repo,
        &["upload-pack", "--advertise-refs", repo],
        b"",
    );
}

/// `upload-pack --advertise-refs` through the shim, its output in a pipe
/// nobody reads yet.
fn advertise_refs_through_the_shim(r: &Repo, repo: &str) -> Proc {
    Proc::spawn(
        git(
            &r.shim,
            &r.home,
            &r.repo,
            &["upload-pack", "--advertise-refs", repo],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped()),
    )
}
