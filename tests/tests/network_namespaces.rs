//! Across a real link: clients in their own network namespace reach production through a veth
//! pair with a 1500-byte MTU and segmentation offloads off, so every large request crosses the
//! wire as many MTU-sized segments; and a replayer in a namespace whose link goes silent (no
//! reset, no FIN) is detected by the link's keepalive. The namespaces and veth pairs are made
//! by the tests and torn down after them; traffic only ever goes to their addresses.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tapwire_testkit::pipeline::{Pipeline, PipelineOptions, require_root};
use tapwire_testkit::process::{Process, addr_in, binary_path};
use tapwire_testkit::scrape::scrape;
use tapwire_testkit::servers::RecordingServer;
use tapwire_testkit::servers::SEQUENCE_HEADER;
use tapwire_testkit::traffic;

/// Runs a command, failing with its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} (make test installs it)"))?;
    if !output.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A client namespace joined to this host by a veth pair on a private /30.
struct ClientNamespace {
    name: String,
    host_interface: String,
    client_interface: String,
    host_ip: IpAddr,
    client_ip: IpAddr,
}

impl ClientNamespace {
    fn create() -> anyhow::Result<ClientNamespace> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = (std::process::id() % 200) * 4 + NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("tapwire-test-{id}");
        let host_interface = format!("twh{id}");
        let client_interface = format!("twc{id}");
        let (third, fourth) = (id / 64 % 256, (id % 64) * 4);
        let host_ip = format!("10.213.{third}.{}", fourth + 1);
        let client_ip = format!("10.213.{third}.{}", fourth + 2);
        // Leftovers of an earlier, killed run would make the next steps fail.
        let _ = run("ip", &["netns", "del", &name]);
        let _ = run("ip", &["link", "del", &host_interface]);
        let namespace = ClientNamespace {
            name: name.clone(),
            host_interface: host_interface.clone(),
            client_interface: client_interface.clone(),
            host_ip: host_ip.parse()?,
            client_ip: client_ip.parse()?,
        };
        run("ip", &["netns", "add", &name])?;
        run(
            "ip",
            &[
                "link",
                "add",
                &host_interface,
                "type",
                "veth",
                "peer",
                "name",
                &client_interface,
            ],
        )?;
        run("ip", &["link", "set", &client_interface, "netns", &name])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                &host_interface,
            ],
        )?;
        run("ip", &["link", "set", &host_interface, "mtu", "1500", "up"])?;
        let in_ns = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &name];
            full.extend_from_slice(args);
            run("ip", &full)
        };
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{client_ip}/30"),
            "dev",
            &client_interface,
        ])?;
        in_ns(&["ip", "link", "set", &client_interface, "mtu", "1500", "up"])?;
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        // Without offloads the client's kernel cuts every send into MTU-sized segments.
        in_ns(&[
            "ethtool",
            "-K",
            &client_interface,
            "tso",
            "off",
            "gso",
            "off",
        ])?;
        run("ethtool", &["-K", &host_interface, "gro", "off"])?;
        Ok(namespace)
    }

    /// Runs a program inside the namespace.
    fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for ClientNamespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the pair.
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = run("ip", &["link", "del", &self.host_interface]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_posts_over_a_1500_byte_mtu_link_arrive_intact() {
    require_root().unwrap();
    let namespace = ClientNamespace::create().unwrap();
    let link = run("ip", &["link", "show", &namespace.host_interface]).unwrap();
    assert!(link.contains("mtu 1500"), "{link}");
    let pipeline = Pipeline::start(PipelineOptions {
        interface: namespace.host_interface.clone(),
        production_ip: namespace.host_ip,
        targets: 1,
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let production: SocketAddr = pipeline.production.addr();

    // A Rust client: the standard mix (keep-alive, fresh connections, chunked, 64 KiB-1 MiB
    // bodies) over 6 concurrent connections.
    let mix = 300;
    let load = binary_path("tapwire-load").unwrap();
    let outcome = tokio::task::spawn_blocking({
        let namespace_name = namespace.name.clone();
        move || {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &namespace_name,
                    load.to_str().unwrap(),
                    "--addr",
                    &production.to_string(),
                    "--requests",
                    &mix.to_string(),
                    "--connections",
                    "6",
                ],
            )
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(outcome.trim(), format!("ok={mix} failed=0"));

    // curl with a body just over 1 MiB, which makes it ask for `Expect: 100-continue`.
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body");
    let body: Vec<u8> = (0..(1 << 20) + 1).map(|i| (i % 253) as u8).collect();
    std::fs::write(&body_path, &body).unwrap();
    let curl_sequence = mix;
    let status = namespace
        .exec(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &format!("{SEQUENCE_HEADER}: {curl_sequence}"),
                "--data-binary",
                &format!("@{}", body_path.display()),
                &format!("http://{production}/upload"),
            ],
        )
        .unwrap();
    assert_eq!(status, "200");

    let total = mix + 1;
    assert!(
        pipeline
            .wait_for_targets(total, Duration::from_secs(60))
            .await
    );
    let at_production = pipeline.production.received();
    let at_target = pipeline.targets[0].received();
    let report = pipeline.finish(total).await.unwrap();
    assert!(report.is_complete(), "{}", report.table());
    let request_bytes: usize = at_production.values().map(|r| r[0].body.len()).sum();
    assert!(
        report.packets_captured as usize >= request_bytes / 1448,
        "{} packets for {request_bytes} body bytes: segments were not MTU-sized",
        report.packets_captured
    );
    for sequence in 0..total {
        let original = &at_production[&sequence][0];
        let copy = &at_target[&sequence];
        assert_eq!(copy.len(), 1, "request {sequence}");
        assert_eq!(copy[0].body, original.body, "request {sequence} body");
        assert_eq!(copy[0].path_and_query, original.path_and_query);
    }
    assert_eq!(at_target[&curl_sequence][0].body, body);
    assert_eq!(
        at_target[&curl_sequence][0].headers["expect"],
        "100-continue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayer_whose_link_goes_silent_is_detected_and_its_connections_move() {
    require_root().unwrap();
    let namespace = ClientNamespace::create().unwrap();
    let wait = Duration::from_secs(60);
    // One target both replayers reach: on the host's end of the veth pair.
    let target = RecordingServer::start_on(namespace.host_ip, true)
        .await
        .unwrap();
    let far = Process::spawn_in_namespace(
        &namespace.name,
        "tapwire-replayer",
        &[
            "--grpc-listen".into(),
            format!("{}:7070", namespace.client_ip),
            "--metrics-listen".into(),
            format!("{}:0", namespace.client_ip),
            "--target".into(),
            target.url(),
        ],
    )
    .unwrap();
    let far_metrics = addr_in(
        &far.wait_for_line("metrics endpoint listening", wait)
            .await
            .unwrap(),
    )
    .unwrap();
    far.wait_for_line("grpc server listening", wait)
        .await
        .unwrap();
    let pipeline = Pipeline::start(PipelineOptions {
        targets: 0,
        replayer_args: vec!["--target".into(), target.url()],
        listener_args: vec![
            "--replayer".into(),
            format!("http://{}:7070", namespace.client_ip),
        ],
        ..PipelineOptions::default()
    })
    .await
    .unwrap();
    let links_up = || async {
        scrape(pipeline.listener_metrics)
            .await
            .unwrap()
            .sum("tapwire_listener_replayer_up", &[])
    };
    let started = tokio::time::Instant::now();
    while links_up().await < 2 {
        assert!(started.elapsed() < wait, "both links never came up");
        // The listener has no event for link changes; its metrics are the signal.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let production = pipeline.production.addr();
    assert_eq!(
        traffic::send_mix_range(production, 0..200, 16).await.ok,
        200
    );
    assert_eq!(target.wait_for_served(200, wait).await, 200);
    let far_share = scrape(far_metrics)
        .await
        .unwrap()
        .sum("tapwire_replayer_records_received_total", &[]);
    assert!(far_share > 0, "the far replayer got no connections");

    // The far end goes silent: no reset, no FIN; packets simply vanish.
    namespace
        .exec("ip", &["link", "set", &namespace.client_interface, "down"])
        .unwrap();
    let silent_at = tokio::time::Instant::now();
    assert_eq!(
        traffic::send_mix_range(production, 200..400, 16).await.ok,
        200
    );
    while links_up().await > 1 {
        assert!(
            silent_at.elapsed() < wait,
            "a silent replayer was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let noticed = silent_at.elapsed();
    // What was sent into the silence moves to the live replayer.
    assert_eq!(target.wait_for_served(400, wait).await, 400);
    eprintln!("silent replayer noticed after {noticed:?}");
    assert!(
        noticed < Duration::from_secs(20),
        "noticed after {noticed:?}"
    );
    assert_eq!(target.not_exactly_once(0..400), [], "(request, copies)");
    drop(far);
}
