//! `dropdeploy config check`: every problem with its line and column, or what each app does.

use crate::support::World;

#[test]
fn a_broken_file_is_reported_with_line_and_column() {
    let world = World::new();
    let bad = world.path("bad.toml");
    std::fs::write(
        &bad,
        "state_dir = \"/tmp/x\"\n\n[[app]]\nname = \"my-app\"\ndrop_dri = \"/srv/x\"\n",
    )
    .unwrap();
    world
        .run(&["config", "check", bad.to_str().unwrap()])
        .assert_code(2)
        .assert_contains(&format!("{}:5:1: unknown key `drop_dri`", bad.display()));
}

#[test]
fn a_bad_value_is_reported_at_the_value() {
    let world = World::new();
    let bad = world.path("bad.toml");
    std::fs::write(
        &bad,
        "[[app]]\nname = \"my-app\"\ndrop_dir = \"/srv/x\"\nsettle = \"soon\"\n",
    )
    .unwrap();
    world
        .run(&["config", "check", bad.to_str().unwrap()])
        .assert_code(2)
        .assert_contains(&format!(
            "{}:4:10: invalid duration \"soon\"",
            bad.display()
        ));
}

#[test]
fn a_valid_file_says_what_each_app_will_do() {
    let world = World::new();
    world.add_drop_app("my-app", "queue = \"all\"");
    world.add_local_app("site", "keep_releases = 3");
    let run = world.run(&["config", "check"]);
    run.assert_code(0)
        .assert_contains("valid")
        .assert_contains("app my-app: archives dropped in")
        .assert_contains("Scalingo app my-app; queue all")
        .assert_contains("app site:")
        .assert_contains("local releases in")
        .assert_contains("(keep 3)")
        .assert_contains("token from $SCALINGO_API_TOKEN");
}
