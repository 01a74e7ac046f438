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

#[test]
fn the_old_key_quiet_still_works_and_warns_once_naming_its_line() {
    let world = World::new();
    let root = world.path("src");
    std::fs::create_dir_all(&root).unwrap();
    world.append_config(&format!(
        "\n[[app]]\nname = \"my-app\"\nsource_dir = \"{}\"\nquiet = \"300ms\"\n",
        root.display()
    ));
    let text = std::fs::read_to_string(&world.config).unwrap();
    let line = text.lines().position(|l| l.starts_with("quiet =")).unwrap() + 1;
    let run = world.run(&["config", "check"]);
    run.assert_code(0)
        .assert_contains("packed after 300ms without change");
    let warning = format!(
        "{}:{line}: `quiet` in [[app]] is now called `debounce`; rename it",
        world.config.display()
    );
    assert_eq!(run.all().matches(&warning).count(), 1, "{}", run.all());
}

#[test]
fn the_debounce_key_sets_the_wait_without_a_warning() {
    let world = World::new();
    world.add_tree_app("my-app", "");
    let run = world.run(&["config", "check"]);
    run.assert_code(0)
        .assert_contains("packed after 200ms without change");
    assert!(!run.all().contains("warning"), "{}", run.all());
}
