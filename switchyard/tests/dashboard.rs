//! The dashboard in a real browser: Debian's `chromium`, headless, driven through
//! `chromedriver` over WebDriver (the `fantoccini` client). The page is loaded from a proxy
//! with real HTTP backends; the test reads the DOM as the page renders it, kills a backend,
//! drains a server with the page's button and checks the page asked nothing of any host but
//! the admin listener (Chrome's own network log, through chromedriver).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them).

mod support;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper::Response;
use serde_json::{Value, json};

use support::config::Config;
use support::http::{HttpBackend, full, get};
use support::ops::listener_addr;
use support::{Proxy, free_port, wait_until};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TOKEN: &str = "dashboard-test-token";

/// A chromedriver process and a browser session on it. `close` ends both; dropped
/// without it (a failed test), chromedriver's process group is killed, the browser it
/// started with it (the browser outlives a chromedriver killed alone).
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(None) = self.driver.try_wait() {
            let group = i32::try_from(self.driver.id()).expect("a pid");
            // SAFETY: kill(2) with a negated process group id reads no memory.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver on a free port (again on another if that one was taken in the
    /// meantime) and opens a headless chromium session with a fresh profile, logging every
    /// network event and console message.
    async fn start() -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: apt-get install chromium chromium-driver"
            );
        }
        let profile = tempfile::tempdir().expect("profile dir");
        for _ in 0..5 {
            let port = free_port();
            let mut driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn chromedriver");
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            let mut exited = false;
            wait_until("chromedriver to listen", || {
                exited = exited || driver.try_wait().ok().flatten().is_some();
                let exited = exited;
                async move { exited || tokio::net::TcpStream::connect(address).await.is_ok() }
            })
            .await;
            if exited {
                continue;
            }
            let capabilities = json!({
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-breakpad", "--disable-crash-reporter",
                        format!("--user-data-dir={}", profile.path().display()),
                        "--window-size=1400,1000",
                    ],
                },
                "goog:loggingPrefs": { "performance": "ALL", "browser": "ALL" },
            });
            let Value::Object(capabilities) = capabilities else {
                unreachable!("a JSON object literal");
            };
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let client = ClientBuilder::new(connector)
                .capabilities(capabilities)
                .connect(&format!("http://{address}"))
                .await
                .expect("a chromium session");
            return Browser {
                client,
                driver,
                _profile: profile,
            };
        }
        panic!("chromedriver could not take a free port five times");
    }

    /// Ends the browser session (chromedriver quits the browser), then chromedriver.
    async fn close(mut self) {
        let client = self.client.clone();
        client.close().await.expect("session closed");
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.expect("script ran")
    }

    /// The text of the first element matching `selector`, `None` while there is none.
    async fn text(&self, selector: &str) -> Option<String> {
        let value = self
            .eval(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![json!(selector)],
            )
            .await;
        value.as_str().map(str::to_string)
    }

    /// Whether the first element matching `selector` is displayed (not `display: none`,
    /// itself or an ancestor).
    async fn displayed(&self, selector: &str) -> bool {
        self.eval(
            "const e = document.querySelector(arguments[0]); return !!e && e.offsetParent !== null;",
            vec![json!(selector)],
        )
        .await
            == json!(true)
    }

    /// Chrome's log of `kind` (`performance`: DevTools network events; `browser`: the
    /// console) since the last read, through chromedriver's log endpoint.
    async fn log(&self, kind: &'static str) -> Vec<Value> {
        let entries = self.client.issue_cmd(GetLog(kind)).await.expect("log");
        entries.as_array().cloned().unwrap_or_default()
    }
}

/// chromedriver's `POST /session/{id}/se/log` (Chrome's logs; not in W3C WebDriver).
#[derive(Debug)]
struct GetLog(&'static str);

impl WebDriverCompatibleCommand for GetLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (hyper::Method, Option<String>) {
        (
            hyper::Method::POST,
            Some(json!({ "type": self.0 }).to_string()),
        )
    }
}

/// Requests to `front` until `stop` (at most 5000), so that counters move while the page
/// watches.
fn traffic(front: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for _ in 0..5000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            get(front, "/", &[]).await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
}

/// An HTTP backend answering 200 `ok` to everything (health checks included).
async fn backend() -> HttpBackend {
    HttpBackend::start(|_| async { Response::new(full("ok")) }).await
}

/// Saves a screenshot of the page in the proxy's temp dir, and in the directory
/// `SWITCHYARD_DASHBOARD_SCREENSHOTS` names, if set, to look at after the run.
async fn save_screenshot(browser: &Browser, proxy: &Proxy, name: &str) {
    let shot = browser.client.screenshot().await.expect("screenshot");
    assert!(shot.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(proxy.dir.path().join(name), &shot).expect("screenshot saved");
    if let Some(dir) = std::env::var_os("SWITCHYARD_DASHBOARD_SCREENSHOTS") {
        std::fs::write(Path::new(&dir).join(name), &shot).expect("screenshot kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_state_and_drains_a_server() {
    let (alpha, bravo) = (backend().await, backend().await);
    let config = Config::new()
        .protocol("http")
        .admin(r#"token = "env:DASHBOARD_TOKEN""#)
        .pool(r#"health = { check = "http", path = "/", interval = "200ms", fall = 2, rise = 1 }"#)
        .server("alpha", alpha.addr, "max_connections = 50")
        .server("bravo", bravo.addr, "")
        .build();
    let proxy = Proxy::start_with_env(&config, Some(TOKEN), &[("DASHBOARD_TOKEN", TOKEN)]).await;
    proxy.wait_pool_checked_up("app").await;
    let front = listener_addr(&proxy, "front").await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(front, stop.clone());

    // The page and its files come with a policy that allows nothing but this listener.
    let page = get(proxy.admin, "/", &[("host", &proxy.admin.to_string())]).await;
    assert_eq!(page.status, 200);
    let policy = page.headers["content-security-policy"]
        .to_str()
        .expect("ASCII");
    assert!(policy.starts_with("default-src 'self'"), "{policy}");

    let browser = Browser::start().await;
    let admin = format!("http://{}/", proxy.admin);
    browser.client.goto(&admin).await.expect("page loads");
    let alpha_row = r#"tr[data-pool="app"][data-server="alpha"]"#;
    let bravo_row = r#"tr[data-pool="app"][data-server="bravo"]"#;
    for row in [alpha_row, bravo_row] {
        wait_until(&format!("{row} shown up"), || async {
            browser.text(&format!("{row} .state")).await.as_deref() == Some("up")
        })
        .await;
    }
    assert_eq!(
        browser
            .text(&format!("{alpha_row} .cell-name"))
            .await
            .as_deref(),
        Some("alpha")
    );
    let sessions = browser.text(&format!("{alpha_row} .cell-cur")).await;
    assert!(
        sessions.as_deref().is_some_and(|s| s.ends_with(" / 50")),
        "current / max_connections: {sessions:?}"
    );

    // Counters move on the page as requests go through (HTTP requests reuse the server
    // connections, so the responses by class move, the sessions hardly).
    let answered = |text: Option<String>| -> u64 {
        let text = text.unwrap_or_default();
        let classes: Vec<u64> = text.split(" / ").filter_map(|n| n.parse().ok()).collect();
        classes.get(1).copied().unwrap_or(0)
    };
    let first = answered(browser.text(&format!("{alpha_row} .cell-classes")).await);
    wait_until("alpha's 2xx count to grow on the page", || async {
        answered(browser.text(&format!("{alpha_row} .cell-classes")).await) > first
    })
    .await;
    wait_until("a request rate on the page", || async {
        browser
            .text(&format!("{alpha_row} .cell-requests"))
            .await
            .and_then(|t| t.parse::<f64>().ok())
            .is_some_and(|rate| rate > 0.0)
    })
    .await;
    assert_eq!(
        browser.text(".cell-protocol").await.as_deref(),
        Some("http"),
        "the listener row"
    );

    // A token is required and none was entered: no state buttons, no warning.
    assert!(
        !browser
            .displayed(&format!("{alpha_row} .cell-actions"))
            .await
    );
    assert!(!browser.displayed("#open-mutations").await);

    // A dead backend turns its row down once the health checks see it.
    drop(bravo);
    wait_until("bravo shown down", || async {
        browser
            .text(&format!("{bravo_row} .state"))
            .await
            .as_deref()
            == Some("down")
    })
    .await;
    let bravo_class = browser
        .eval(
            "return document.querySelector(arguments[0]).className;",
            vec![json!(format!("{bravo_row} .state"))],
        )
        .await;
    assert_eq!(bravo_class, json!("state state-down"));

    // With the token typed in, the buttons appear; drain goes through the API.
    let input = browser
        .client
        .find(Locator::Id("token"))
        .await
        .expect("token box");
    input.send_keys(TOKEN).await.expect("typed");
    wait_until("the state buttons to appear", || async {
        browser
            .displayed(&format!("{alpha_row} .cell-actions"))
            .await
    })
    .await;
    let drain = browser
        .client
        .find(Locator::Css(&format!(
            r#"{alpha_row} button[data-state="drain"]"#
        )))
        .await
        .expect("drain button");
    drain.click().await.expect("clicked");
    wait_until("alpha drained through the API", || async {
        proxy.server("app", "alpha").await.state == "drain"
    })
    .await;
    wait_until("alpha shown drained", || async {
        browser
            .text(&format!("{alpha_row} .state"))
            .await
            .as_deref()
            == Some("drain")
    })
    .await;
    let token_in_page = browser
        .eval(
            "return [location.href, document.cookie, localStorage.length, sessionStorage.length];",
            vec![],
        )
        .await;
    assert_eq!(
        token_in_page,
        json!([admin, "", 0, 0]),
        "the token stays in memory"
    );

    // Forgetting the token hides the buttons again.
    browser
        .client
        .find(Locator::Id("token-forget"))
        .await
        .expect("forget button")
        .click()
        .await
        .expect("clicked");
    assert!(
        !browser
            .displayed(&format!("{alpha_row} .cell-actions"))
            .await
    );

    // The filter hides rows that do not match.
    let filter = browser
        .client
        .find(Locator::Id("filter"))
        .await
        .expect("filter box");
    filter.send_keys("bravo").await.expect("typed");
    wait_until("the filter to hide alpha", || async {
        !browser.displayed(alpha_row).await && browser.displayed(bravo_row).await
    })
    .await;
    filter.clear().await.expect("cleared");
    filter.send_keys(" ").await.expect("typed");
    wait_until("alpha back", || async {
        browser.displayed(alpha_row).await
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    load.await.expect("traffic task");
    save_screenshot(&browser, &proxy, "dashboard.png").await;

    // On a phone-width screen, the page fits: optional columns go, tables scroll inside.
    browser
        .client
        .set_window_size(390, 844)
        .await
        .expect("resized");
    wait_until("optional columns hidden on a narrow screen", || async {
        !browser.displayed(&format!("{alpha_row} .cell-total")).await
    })
    .await;
    let overflow = browser
        .eval(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await;
    assert_eq!(
        overflow,
        json!(0),
        "no sideways scrolling of the page itself"
    );
    save_screenshot(&browser, &proxy, "dashboard-phone.png").await;

    // The browser asked nothing of any other host, and logged no error (a CSP violation
    // would be one).
    let mut urls = Vec::new();
    for entry in browser.log("performance").await {
        let message: Value = entry["message"]
            .as_str()
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        let params = &message["message"]["params"];
        // The browser's own pages (its new tab page, which it opens first) load `chrome://`
        // resources of their own; anything the dashboard (or a page it led to) asked for
        // has another document.
        let document = params["documentURL"].as_str().unwrap_or_default();
        if message["message"]["method"] == "Network.requestWillBeSent"
            && !document.starts_with("chrome://")
        {
            let url = params["request"]["url"].as_str();
            urls.push(url.unwrap_or_default().to_string());
        }
    }
    assert!(
        urls.iter().any(|u| u.ends_with("/api/v1/stats")),
        "{urls:?}"
    );
    assert!(urls.iter().any(|u| u.ends_with("/state")), "{urls:?}");
    let foreign: Vec<&String> = urls.iter().filter(|u| !u.starts_with(&admin)).collect();
    assert!(foreign.is_empty(), "requests elsewhere: {foreign:?}");
    let errors: Vec<Value> = browser
        .log("browser")
        .await
        .into_iter()
        .filter(|entry| entry["level"] == "SEVERE" || entry["level"] == "WARNING")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_buttons_show_with_a_warning() {
    let alpha = backend().await;
    let config = Config::new()
        .protocol("http")
        .server("alpha", alpha.addr, "")
        .build();
    let proxy = Proxy::start(&config).await;
    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("http://{}/", proxy.admin))
        .await
        .expect("page loads");
    let alpha_row = r#"tr[data-pool="app"][data-server="alpha"]"#;
    wait_until("alpha shown with its buttons", || async {
        browser
            .displayed(&format!("{alpha_row} .cell-actions"))
            .await
    })
    .await;
    assert!(
        browser.displayed("#open-mutations").await,
        "the page says mutations are open"
    );
    browser
        .client
        .find(Locator::Css(&format!(
            r#"{alpha_row} button[data-state="maint"]"#
        )))
        .await
        .expect("maint button")
        .click()
        .await
        .expect("clicked");
    wait_until("alpha in maint through the API", || async {
        proxy.server("app", "alpha").await.state == "maint"
    })
    .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_of_resolved_pools_are_listed_by_usage() {
    let alpha = backend().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let routes = dir.path().join("routes.toml");
    let answers = ["shop", "blog"]
        .map(|tenant| {
            format!(
                "[\"{tenant}.test\"]\nservers = [{{ address = \"{}\" }}]\ntenant = \"{tenant}\"\n",
                alpha.addr
            )
        })
        .join("\n");
    std::fs::write(&routes, answers).expect("routes");
    let config = support::config::map_resolved("http", "", "{host}", &routes, "");
    let proxy = Proxy::start(&config).await;
    let front = listener_addr(&proxy, "front").await;
    // shop makes three requests, blog one: shop comes first.
    for host in ["shop.test", "shop.test", "shop.test", "blog.test"] {
        let answer = get(front, "/", &[("host", host)]).await;
        assert_eq!(answer.status, 200, "{host}");
    }
    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("http://{}/", proxy.admin))
        .await
        .expect("page loads");
    wait_until("the tenants table lists shop's three requests", || async {
        browser
            .text(r#"#tenants tr[data-tenant="shop"] .cell-requests"#)
            .await
            .as_deref()
            == Some("3")
    })
    .await;
    assert!(browser.displayed("#tenants-section").await);
    let order = browser
        .eval(
            "return [...document.querySelectorAll('#tenants tbody tr')].map(r => r.dataset.tenant);",
            vec![],
        )
        .await;
    assert_eq!(order, json!(["shop", "blog"]), "largest first");
    assert_eq!(
        browser
            .text(r#"#tenants tr[data-tenant="blog"] .cell-requests"#)
            .await
            .as_deref(),
        Some("1")
    );
    // The pool shows the server its answers route to, with the keys routed there.
    let resolved = format!(
        r#"section[data-pool="tenants"] .resolved tr[data-server="{}"] .cell-keys"#,
        alpha.addr
    );
    assert_eq!(
        browser.text(&resolved).await.as_deref(),
        Some("blog.test (blog), shop.test (shop)")
    );
    let console = browser.log("browser").await;
    assert!(console.is_empty(), "no console messages: {console:?}");
    save_screenshot(&browser, &proxy, "tenants.png").await;
    browser.close().await;
}
