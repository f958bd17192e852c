//! Fleet reports in an S3 bucket (docs/fleet.md "Reports in an S3 bucket"): machines
//! upload through a pre-signed POST policy the publisher signed into the channel's
//! index, to a real S3 store that checks it (Ceph's radosgw: common/s3.rs), and the
//! controller copies the new reports from the bucket before it decides.

#[macro_use]
mod common;

use common::fleet::{Machine, Publication, arbor, failing_health_check};
use common::nginx::Nginx;
use common::s3::{ACCESS_KEY, Rgw, SECRET};
use common::{s, scratch};

/// Uploads `body` with the channel's form fields (from the published index) and `key`.
fn post_with_form(form: &serde_json::Value, key: &str, body: &[u8], dir: &std::path::Path) -> u16 {
    let file = dir.join("upload.json");
    std::fs::write(&file, body).unwrap();
    let mut c = std::process::Command::new("curl");
    c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
    c.args(["-F", &format!("key={key}")]);
    for (k, v) in form["fields"].as_object().unwrap() {
        c.args(["-F", &format!("{k}={}", v.as_str().unwrap())]);
    }
    c.args(["-F", &format!("file=@{}", file.display())]);
    c.arg(form["url"].as_str().unwrap());
    String::from_utf8(c.output().unwrap().stdout)
        .unwrap()
        .parse()
        .unwrap()
}

/// The report form as the published index of channel stable carries it.
fn published_form(p: &str) -> serde_json::Value {
    let shown = arbor(&["publish", "show", p, "stable"]);
    let idx: serde_json::Value = serde_json::from_str(&shown).unwrap();
    idx["rollout"]["report_form"].clone()
}

/// Two machines report version 1 good and then 2 (whose check fails) through the
/// form, each report an object under the bucket's prefix; the bucket's secret is
/// nowhere in the publication. The form allows that prefix and small objects only.
/// The controller copies the new reports (only the new ones, the second time) and
/// halts 2. A form that expired refuses the next report, which waits in the outbox;
/// the controller signs a new form past half the old one's life, and the report goes
/// out at the machine's next check.
#[test]
fn root_reports_go_to_an_s3_bucket_through_a_signed_post_form() {
    as_root!();
    let t = scratch();
    let rgw = Rgw::start(t.path()).unwrap_or_else(|e| panic!("radosgw: {e}"));
    rgw.make_bucket("fleet");
    let publ = Publication::new(t.path(), &["1", "2"], |v, tree| {
        if v == "2" {
            failing_health_check(tree)
        }
    });
    let p = publ.dir.clone();
    publ.add("1", &["--phase", "100"]);
    let nginx = Nginx::start(&publ.srv, &t.path().join("nginx"), None);
    let creds = t.path().join("bucket.toml");
    std::fs::write(
        &creds,
        format!("username = \"{ACCESS_KEY}\"\npassword = \"{SECRET}\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bucket_url = format!("{}/fleet/reports", rgw.endpoint);
    let rules = |valid: &str| {
        arbor(&[
            "publish",
            "rollout-rules",
            &p,
            "--channel",
            "stable",
            "--reports-s3",
            &bucket_url,
            "--s3-credentials",
            s(&creds),
            "--s3-valid",
            valid,
            "--steps",
            "50,100",
            "--min-good",
            "1",
            "--max-failed",
            "20",
            "--soak",
            "0s",
        ])
    };
    let out = rules("7d");
    assert!(
        out.contains(&format!("reports to the S3 bucket {bucket_url}/")),
        "{out}"
    );
    let form = published_form(&p);
    assert_eq!(form["key_prefix"], "reports/", "{form:#}");
    assert!(form["fields"]["x-amz-signature"].is_string(), "{form:#}");
    let secret_found = std::process::Command::new("grep")
        .args(["-r", "-l", SECRET, &p])
        .output()
        .unwrap();
    assert!(
        secret_found.stdout.is_empty(),
        "the bucket's secret is in the publication: {}",
        String::from_utf8_lossy(&secret_found.stdout)
    );

    // Version 1, good, on both machines: two reports in the bucket, by POST.
    let url = format!("{}pub", nginx.url);
    let machines: Vec<Machine> = ["m1", "m2"]
        .iter()
        .map(|n| Machine::new(t.path(), n, &url, &publ.root()))
        .collect();
    for m in &machines {
        m.ok(&["deploy", "origin:stable"]);
        assert_eq!(m.reboot(), "1");
    }
    let keys = rgw.keys("fleet", "reports/stable/");
    assert_eq!(keys.len(), 2, "{keys:?}\n{}", rgw.log());

    // What the form allows: its prefix only, and small objects.
    assert_eq!(
        post_with_form(&form, "elsewhere/x.json", b"{}", t.path()),
        403
    );
    assert_eq!(
        post_with_form(&form, "reports/stable/big.json", &[b' '; 9000], t.path()),
        400
    );
    let mut tampered = form.clone();
    tampered["fields"]["x-amz-signature"] = "0".repeat(64).into();
    assert_eq!(
        post_with_form(&tampered, "reports/stable/x.json", b"{}", t.path()),
        403
    );
    assert_eq!(rgw.keys("fleet", "reports/").len(), 2);

    // 2 to everyone; it fails its check on both. The controller copies the four
    // reports and halts it; a second run copies nothing new.
    publ.add("2", &["--phase", "100"]);
    for m in &machines {
        m.ok(&["upgrade"]);
        assert_eq!(m.reboot(), "2");
    }
    let reports = t.path().join("reports");
    let rollout_with = |key: &[&str]| {
        let mut args = vec!["publish", "rollout", &p, "--channel", "stable"];
        args.extend(["--reports", s(&reports)]);
        args.extend_from_slice(key);
        common::arbor(&args)
    };
    let rollout = || {
        let out = rollout_with(&["--s3-credentials", s(&creds)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = rollout();
    assert!(
        out.contains("copied 4 new reports from the bucket (4 listed, 0 not reports)"),
        "{out}"
    );
    assert!(out.contains("2: HALTED, 2 of 2 machines failed"), "{out}");
    let out = rollout();
    assert!(out.contains("copied 0 new reports"), "{out}");
    let e = rollout_with(&[]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        !e.status.success() && err.contains("give the bucket's key (--s3-credentials)"),
        "{err}"
    );

    // A form that lasts 10 s: the machines take it, it expires, and the next report
    // (2's rollback, after the loader gives up on it) is refused and kept.
    rules("10s");
    let m = &machines[0];
    m.ok(&["upgrade", "--check"]);
    std::thread::sleep(std::time::Duration::from_secs(11));
    assert_eq!(m.reboot_until("1"), "1", "the loader gave up on 2");
    let outbox = m.outbox();
    let waiting = || std::fs::read_dir(&outbox).map_or(0, |d| d.count());
    assert!(
        waiting() > 0,
        "the refused report waits in {}",
        outbox.display()
    );
    let before = rgw.keys("fleet", "reports/stable/").len();

    // The controller signs a new form (past half the old one's life); at its next
    // check the machine takes it and sends what waited.
    let out = rollout();
    assert!(out.contains("signed anew"), "{out}");
    m.ok(&["upgrade", "--check"]);
    assert_eq!(waiting(), 0, "the outbox was sent");
    assert!(rgw.keys("fleet", "reports/stable/").len() > before);
    rollout();
    let status = common::fleet::arbor_json(&[
        "publish",
        "status",
        &p,
        "--channel",
        "stable",
        "--reports",
        s(&reports),
        "--json",
    ]);
    let two = &status["versions"][1];
    assert_eq!(
        (&two["failed"], &two["rolled_back"]),
        (&1.into(), &1.into()),
        "{status:#}"
    );
}
