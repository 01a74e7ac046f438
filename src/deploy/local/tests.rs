use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::UNIX_EPOCH;

use tar::EntryType;

use super::activate::shown_command;
use super::extract::{ExtractError, extract_from};
use super::prune::{list_releases, remove_tree};
use super::switch::switch_current;
use super::*;
use crate::process::OutputTail;

fn target(dir: &Path, activate: &[&str], keep: usize) -> LocalTarget {
    LocalTarget::new(&LocalTargetConfig {
        releases_dir: dir.to_path_buf(),
        activate: activate.iter().map(|s| s.to_string()).collect(),
        activate_timeout: Duration::from_secs(10),
        keep_releases: keep,
    })
}

/// Name, type, link target, content.
type RawEntry<'a> = (&'a [u8], EntryType, &'a [u8], &'a [u8]);

/// A tar (uncompressed) built from raw GNU headers: any name, any link target.
fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut header = tar::Header::new_gnu();
        {
            let gnu = header.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            gnu.linkname[..link.len()].copy_from_slice(link);
        }
        header.set_entry_type(*kind);
        header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        header.set_size(data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn extract_raw(entries: &[RawEntry<'_>]) -> (tempfile::TempDir, Result<(), String>) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("release");
    fs::create_dir(&dest).unwrap();
    let result = extract_from(&raw_tar(entries)[..], &dest).map_err(|e| match e {
        ExtractError::Refused(why) => format!("refused: {why}"),
        ExtractError::Io(why) => format!("io: {why}"),
    });
    (dir, result)
}

const DIR: EntryType = EntryType::Directory;
const FILE: EntryType = EntryType::Regular;
const SYMLINK: EntryType = EntryType::Symlink;
const HARD: EntryType = EntryType::Link;

#[test]
fn release_names_sort_by_creation_time() {
    assert_eq!(
        LocalTarget::release_name(1_700_000_000, "app-20231114221320-deadbeef"),
        "20231114T221320Z-app-20231114221320-deadbeef"
    );
    assert_eq!(
        LocalTarget::release_name(0, "a/b c"),
        "19700101T000000Z-a_b_c"
    );
    assert!(looks_like_release(&LocalTarget::release_name(5, "x")));
    assert!(!looks_like_release("current"));
    assert!(!looks_like_release(".partial-19700101T000000Z-x"));
    assert!(!looks_like_release("19700101T000000Z-"));
    assert!(!looks_like_release("1970010T000000Z-x"));
}

#[test]
fn a_leading_dot_slash_and_the_top_folder_are_stripped() {
    let (dir, result) = extract_raw(&[
        (b"./", DIR, b"", b""),
        (b"./app/", DIR, b"", b""),
        (b"./app/sub/x.txt", FILE, b"", b"hello"),
        (b"app/y", FILE, b"", b"why"),
    ]);
    result.unwrap();
    let release = dir.path().join("release");
    assert_eq!(fs::read(release.join("sub/x.txt")).unwrap(), b"hello");
    assert_eq!(fs::read(release.join("y")).unwrap(), b"why");
    let mtime = fs::metadata(release.join("y")).unwrap().modified().unwrap();
    assert_eq!(mtime, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
}

#[test]
fn an_entry_under_a_symlink_made_earlier_is_refused() {
    // The link itself stays inside the release; writing through it is still refused.
    let (dir, result) = extract_raw(&[
        (b"app/", DIR, b"", b""),
        (b"app/d/", DIR, b"", b""),
        (b"app/l", SYMLINK, b"d", b""),
        (b"app/l/f", FILE, b"", b"x"),
    ]);
    let err = result.unwrap_err();
    assert!(err.contains("through the symlink app/l"), "{err}");
    assert!(!dir.path().join("release/d/f").exists());
}

#[test]
fn symlink_targets_must_stay_in_the_release() {
    for (link, target, fragment) in [
        (&b"app/l"[..], &b"/etc/passwd"[..], "absolute path"),
        (b"app/l", b"../x", "outside the app/ folder"),
        (b"app/a/l", b"../../x", "outside the app/ folder"),
        (b"app/a/l", b"b/../../../x", "outside the app/ folder"),
        (b"app/l", b"", "empty target"),
    ] {
        let (_dir, result) = extract_raw(&[
            (b"app/", DIR, b"", b""),
            (b"app/a/", DIR, b"", b""),
            (link, SYMLINK, target, b""),
        ]);
        let err = result.unwrap_err();
        assert!(
            err.starts_with("refused") && err.contains(fragment),
            "{err}"
        );
    }
    let (dir, result) = extract_raw(&[
        (b"app/", DIR, b"", b""),
        (b"app/a/", DIR, b"", b""),
        (b"app/a/up", SYMLINK, b"../x", b""),
        (b"app/a/here", SYMLINK, b".", b""),
    ]);
    result.unwrap();
    let up = fs::read_link(dir.path().join("release/a/up")).unwrap();
    assert_eq!(up, Path::new("../x"));
}

#[test]
fn hard_links_must_point_to_a_file_in_the_release() {
    let (dir, result) = extract_raw(&[
        (b"app/", DIR, b"", b""),
        (b"app/f", FILE, b"", b"data"),
        (b"app/h", HARD, b"app/f", b""),
    ]);
    result.unwrap();
    assert_eq!(fs::read(dir.path().join("release/h")).unwrap(), b"data");

    for (target, fragment) in [
        (&b"/etc/passwd"[..], "points to the absolute path"),
        (b"../../etc/passwd", "outside the app/ folder"),
        (b"other/f", "outside the app/ folder"),
        (b"app", "the app/ folder itself"),
        (b"app/s", "must point to a file"),
        (b"app/missing", "must point to a file"),
    ] {
        let (_dir, result) = extract_raw(&[
            (b"app/", DIR, b"", b""),
            (b"app/a/", DIR, b"", b""),
            (b"app/a/s", SYMLINK, b"../f", b""),
            (b"app/s", SYMLINK, b"a", b""),
            (b"app/h", HARD, target, b""),
        ]);
        let err = result.unwrap_err();
        assert!(err.contains(fragment), "{target:?}: {err}");
    }
}

#[test]
fn paths_special_files_and_second_roots_are_refused() {
    for (name, kind, fragment) in [
        (&b"app/../../evil"[..], FILE, "leaves the archive"),
        (b"/abs", FILE, "absolute path"),
        (b"app/dev", EntryType::Char, "device file"),
        (b"app/pipe", EntryType::Fifo, "fifo"),
        (b"other/x", FILE, "outside the top-level folder app/"),
    ] {
        let (_dir, result) = extract_raw(&[(b"app/", DIR, b"", b""), (name, kind, b"", b"")]);
        let err = result.unwrap_err();
        assert!(err.contains(fragment), "{err}");
    }
}

#[test]
fn a_folder_never_replaces_a_link_and_a_link_never_replaces_a_folder() {
    let (_dir, result) = extract_raw(&[
        (b"app/", DIR, b"", b""),
        (b"app/l", SYMLINK, b".", b""),
        (b"app/l/", DIR, b"", b""),
    ]);
    assert!(result.unwrap_err().contains("would replace"));
    let (_dir, result) = extract_raw(&[
        (b"app/", DIR, b"", b""),
        (b"app/d/", DIR, b"", b""),
        (b"app/d", SYMLINK, b".", b""),
    ]);
    assert!(result.unwrap_err().contains("would replace a folder"));
}

#[test]
fn read_only_folders_get_their_mode_after_their_content() {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(DIR);
    header.set_mode(0o555);
    header.set_size(0);
    builder
        .append_data(&mut header, "app/ro/", &[][..])
        .unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(2);
    builder
        .append_data(&mut header, "app/ro/f", &b"hi"[..])
        .unwrap();
    let bytes = builder.into_inner().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("release");
    fs::create_dir(&dest).unwrap();
    assert!(extract_from(&bytes[..], &dest).is_ok());
    let mode = fs::metadata(dest.join("ro")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o555);
    assert_eq!(fs::read(dest.join("ro/f")).unwrap(), b"hi");
    remove_tree(&dest).unwrap();
    assert!(!dest.exists());
}

#[test]
fn the_activate_command_never_gets_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let target = target(dir.path(), &["env"], 5);
    let command = target.activate_command("web", Path::new("rel"), "ref-1");
    let envs: Vec<(String, Option<String>)> = command
        .get_envs()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.map(|v| v.to_string_lossy().into_owned()),
            )
        })
        .collect();
    assert!(envs.contains(&(TOKEN_VAR.to_string(), None)), "{envs:?}");
    assert!(envs.contains(&("DROPDEPLOY_APP".to_string(), Some("web".to_string()))));
    assert!(envs.contains(&("DROPDEPLOY_GIT_REF".to_string(), Some("ref-1".to_string()))));
    let release = envs
        .iter()
        .find(|(k, _)| k == "DROPDEPLOY_RELEASE")
        .and_then(|(_, v)| v.clone())
        .unwrap();
    assert!(Path::new(&release).is_absolute(), "{release}");
}

#[test]
fn only_the_end_of_a_long_output_is_kept() {
    let mut tail = OutputTail::new(ACTIVATE_OUTPUT_LIMIT);
    for i in 0..100_000u32 {
        tail.push(format!("line {i}\n").as_bytes());
    }
    let text = tail.text();
    assert!(text.len() <= ACTIVATE_OUTPUT_LIMIT + 32);
    assert!(text.starts_with("[earlier output cut]"));
    assert!(text.ends_with("line 99999\n"));
}

#[test]
fn commands_and_durations_read_as_typed() {
    let argv = ["sh", "-c", "echo boom; exit 3", "it's"].map(String::from);
    assert_eq!(shown_command(&argv), r"sh -c 'echo boom; exit 3' 'it'\''s'");
    assert_eq!(crate::human::duration(Duration::from_secs(60)), "60 s");
    assert_eq!(crate::human::duration(Duration::from_millis(300)), "300 ms");
    assert_eq!(crate::human::duration(Duration::from_millis(1500)), "1.5 s");
}

#[test]
fn prune_keeps_the_current_release_and_the_newest_others() {
    let dir = tempfile::tempdir().unwrap();
    let target = target(dir.path(), &[], 2);
    let app_dir = target.app_dir("web");
    fs::create_dir_all(&app_dir).unwrap();
    let names: Vec<String> = (1..=5)
        .map(|i| LocalTarget::release_name(i * 1000, &format!("r{i}")))
        .collect();
    for name in &names {
        fs::create_dir(app_dir.join(name)).unwrap();
    }
    fs::create_dir(app_dir.join(".partial-x")).unwrap();
    fs::write(app_dir.join("notes.txt"), b"mine").unwrap();
    // Rolled back by hand to the oldest release.
    switch_current(&app_dir, Path::new(&names[0])).unwrap();
    let pruned = target.prune("web", &app_dir);
    assert_eq!(
        pruned,
        vec![
            app_dir.join(&names[3]),
            app_dir.join(&names[2]),
            app_dir.join(&names[1])
        ]
    );
    assert_eq!(
        list_releases(&app_dir).unwrap(),
        vec![names[0].clone(), names[4].clone()]
    );
    assert!(app_dir.join(".partial-x").exists());
    assert!(app_dir.join("notes.txt").exists());
    assert_eq!(target.current("web"), Some(app_dir.join(&names[0])));
}
