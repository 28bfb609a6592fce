//! The download page in a real browser: headless Chromium over WebDriver
//! (`kiln_testkit::browser`) against a farm of real processes. Every state
//! the page goes through is saved as a screenshot under
//! `target/page-screenshots/` for a reviewer to look at.

use kiln_testkit::browser::{Browser, Locator, Options};
use serde_json::json;

use crate::farm::ApiFarm;

macro_rules! need_docker {
    ($name:literal) => {
        if !kiln_testkit::docker_available($name) {
            return;
        }
    };
}

macro_rules! browser {
    ($name:literal) => {
        browser!($name, Options::default())
    };
    ($name:literal, $options:expr) => {
        match Browser::start($name, $options).await {
            Some(b) => b,
            None => return,
        }
    };
}

/// Every `#step` text the page shows, recorded as it changes (a build step
/// can come and go between two polls of the test).
const RECORD_STEPS: &str = "
    window.kilnSteps = [];
    const step = document.getElementById('step');
    new MutationObserver(() => window.kilnSteps.push(step.textContent))
        .observe(step, { childList: true, characterData: true, subtree: true });";

/// The modules of the catalogue rows the browser shows (laid out, not
/// merely not marked `hidden`: a stylesheet can override the attribute).
const VISIBLE: &str = "return [...document.querySelectorAll('#catalogue .plugin')]
    .filter((li) => li.getClientRects().length > 0).map((li) => li.dataset.module);";

async fn click(b: &Browser, css: &str) {
    b.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).click().await.unwrap();
}

/// Replace the text of an input as a person would: select all, delete, type.
async fn type_into(b: &Browser, css: &str, text: &str) {
    const SELECT_ALL_DELETE: &str = "\u{E009}a\u{E000}\u{E003}";
    let e = b.client.find(Locator::Css(css)).await.unwrap();
    e.send_keys(&format!("{SELECT_ALL_DELETE}{text}")).await.unwrap();
}

fn plugin_box(module: &str) -> String {
    format!("#catalogue li[data-module='{module}'] input[type=checkbox]")
}

#[tokio::test]
async fn page_searches_builds_two_plugins_and_downloads_what_compat_serves() {
    need_docker!("page_searches_builds_two_plugins_and_downloads_what_compat_serves");
    let b = browser!("build");
    // No worker yet: the build waits in the queue until the test starts one.
    let mut f = ApiFarm::start(&[]).await;

    // The page opens on the first listed recipe; test recipes are not listed.
    b.client.goto(&f.url("/")).await.unwrap();
    b.until("the verdict", "return document.getElementById('verdict').textContent.includes('Will be built')").await;
    assert_eq!(b.text("h1").await, "Download hello");
    let nav = b.text("nav").await;
    assert!(nav.contains("hello") && !nav.contains("fail") && !nav.contains("sleep"), "{nav}");
    b.shot("1-before").await;

    // Search filters as you type: by module path, by description, by category.
    type_into(&b, "#search", "wav").await;
    assert_eq!(b.js(VISIBLE, vec![]).await, json!(["example.com/wave"]));
    type_into(&b, "#search", "capital").await;
    assert_eq!(b.js(VISIBLE, vec![]).await, json!(["example.com/shout"]));
    type_into(&b, "#search", "greetings").await;
    assert_eq!(b.js(VISIBLE, vec![]).await, json!(["example.com/greet", "example.com/shout"]));
    type_into(&b, "#search", "GREET whoever").await;
    assert_eq!(b.js(VISIBLE, vec![]).await, json!(["example.com/greet"]));
    type_into(&b, "#search", "no such plugin").await;
    assert_eq!(b.js(VISIBLE, vec![]).await, json!([]));
    assert_eq!(b.js("return document.getElementById('no-match').hidden", vec![]).await, json!(false));
    b.shot("2-search").await;
    type_into(&b, "#search", "").await;
    assert_eq!(b.js(VISIBLE, vec![]).await.as_array().unwrap().len(), 4);

    // Two plugins and a platform that is not the browser's own.
    click(&b, &plugin_box("example.com/greet")).await;
    click(&b, &plugin_box("example.com/shout")).await;
    click(&b, "input[name=platform][value='linux/arm64']").await;
    b.until(
        "the versions of greet",
        "return document.querySelector(\"li[data-module='example.com/greet'] .pver select option[value='v0.1.0']\")",
    )
    .await;
    let url = b.until("the URL", "const u = location.href; return u.includes('platform=linux/arm64') && u.includes('p=example.com/shout') && u").await;
    assert!(url.as_str().unwrap().contains("p=example.com/greet"), "{url}");
    b.until("the verdict", "return document.getElementById('verdict').textContent.includes('Will be built')").await;

    // Build: the page follows the queued build, then its steps, then the result.
    b.js(RECORD_STEPS, vec![]).await;
    click(&b, "#build").await;
    b.until("the queued state", "return !document.getElementById('progress').hidden && document.getElementById('step').textContent === 'waiting for a worker'").await;
    b.shot("3-queued").await;
    f.add_worker();
    b.until(
        "the result",
        "return !document.getElementById('result').hidden && document.getElementById('result-title').textContent",
    )
    .await;
    assert_eq!(b.text("#result-title").await, "Ready", "{}", f.logs());
    let steps = b.js("return window.kilnSteps", vec![]).await;
    assert!(steps.as_array().unwrap().iter().any(|s| s == "step 1 of 1: build"), "the steps shown: {steps}");
    b.shot("4-done").await;

    // What the result offers: the binary, named as compat names it, the
    // artifact and signature, the commands and the farm's key.
    let download = b.client.find(Locator::Id("download")).await.unwrap();
    let href = download.attr("href").await.unwrap().unwrap();
    assert!(href.starts_with("/api/compat?recipe=hello&os=linux&arch=arm64&version=v1.1.0"), "{href}");
    assert_eq!(download.attr("download").await.unwrap().as_deref(), Some("hello_linux_arm64_custom"));
    let curl = b.text("#curl-cmd").await;
    assert!(curl.starts_with("curl -fo hello_linux_arm64_custom 'http://127.0.0.1:"), "{curl}");
    assert!(curl.contains("p=example.com/greet@v0.2.0&p=example.com/shout@v1.0.0"), "{curl}");
    let kiln = b.text("#kiln-cmd").await;
    assert!(kiln.contains("build hello --version v1.1.0 --os linux --arch arm64 --with example.com/greet@v0.2.0 --with example.com/shout@v1.0.0"), "{kiln}");
    let key = f.get("/api/signing-key").await.text().await.unwrap();
    let key = key.trim().lines().last().unwrap().to_owned();
    let verify = b.text("#verify-cmd").await;
    assert!(verify.contains(&format!("minisign -Vm artifact.tar -P {key}")), "{verify}");
    let docker = b.text("#docker-cmd").await;
    assert!(docker.ends_with("/hello/example.com__greet/example.com__shout:v1.1.0"), "{docker}");
    for (id, suffix) in [("artifact", "/artifact"), ("signature", "/artifact.minisig"), ("build-log", "/log")] {
        let a = b.client.find(Locator::Id(id)).await.unwrap().attr("href").await.unwrap().unwrap();
        assert!(a.ends_with(suffix), "{id}: {a}");
    }

    // The downloaded file is what /api/compat serves for the same choices.
    download.click().await.unwrap();
    let got = b.downloaded("hello_linux_arm64_custom").await;
    let compat = f.get("/api/compat?recipe=hello&os=linux&arch=arm64&p=example.com/greet&p=example.com/shout").await;
    assert_eq!(compat.status(), 200);
    let compat = compat.bytes().await.unwrap();
    assert_eq!(got, compat.to_vec(), "the page's download differs from /api/compat's");
    let printed = String::from_utf8_lossy(&got);
    assert!(printed.contains("linux/arm64") && printed.contains("example.com/shout@v1.0.0"), "{printed}");

    // The same URL again: the page says it is ready before Build is pressed.
    let shared = b.client.current_url().await.unwrap();
    b.client.goto(shared.as_str()).await.unwrap();
    b.until("ready", "return document.getElementById('verdict').textContent.startsWith('Ready — instant download')")
        .await;
    assert_eq!(b.text("#build").await, "Download");
    b.shot("5-ready").await;
    // Pressing it shows the result at once: no new build.
    click(&b, "#build").await;
    b.until("the result", "return !document.getElementById('result').hidden && document.getElementById('result-title').textContent === 'Ready'").await;
    assert_eq!(f.build_count().await, 1);
}

#[tokio::test]
async fn page_shows_live_progress_and_the_log() {
    need_docker!("page_shows_live_progress_and_the_log");
    let b = browser!("progress");
    let f = ApiFarm::with_worker(&[]).await;
    // An unlisted test recipe opens when the URL names it; v5.0.0 sleeps 5 s.
    b.client.goto(&f.url("/?recipe=sleep&version=v5.0.0")).await.unwrap();
    b.until("the verdict", "return document.getElementById('verdict').textContent.includes('Will be built')").await;
    assert!(b.text("main").await.contains("not in the product list"));
    click(&b, "#build").await;
    b.until("the step", "return document.getElementById('step').textContent === 'step 1 of 1: sleep'").await;
    b.until("log lines", "return document.getElementById('log').textContent.includes('slept 2 of 5')").await;
    let elapsed = b.text("#elapsed").await;
    assert!(elapsed.contains("elapsed"), "{elapsed}");
    b.shot("1-building").await;
    b.until("the result", "return document.getElementById('result-title').textContent === 'Ready'").await;
    let log = b.js("return document.getElementById('log').textContent", vec![]).await;
    assert!(log.as_str().unwrap().contains("slept 4 of 5"), "{log}");
    b.shot("2-done").await;
}

#[tokio::test]
async fn page_shows_a_failure_with_its_log() {
    need_docker!("page_shows_a_failure_with_its_log");
    let b = browser!("failure");
    let f = ApiFarm::with_worker(&[]).await;
    b.client.goto(&f.url("/?recipe=fail")).await.unwrap();
    b.until("the verdict", "return document.getElementById('verdict').textContent.includes('Will be built')").await;
    click(&b, "#build").await;
    b.until("the failure", "return document.getElementById('result-title').textContent === 'The build failed'").await;
    let error = b.text("#error").await;
    assert!(error.contains("exited with code 3") && error.contains("intentional failure"), "{error}");
    let log = b.client.find(Locator::Id("failure-log")).await.unwrap().attr("href").await.unwrap().unwrap();
    assert!(log.starts_with("/api/builds/") && log.ends_with("/log"), "{log}");
    let text = f.get(&log).await.text().await.unwrap();
    assert!(text.contains("intentional failure"), "{text}");
    b.shot("1-failed").await;
    // Loaded again, the page says so before anything is pressed.
    b.client.refresh().await.unwrap();
    b.until("the known failure", "return document.getElementById('verdict').textContent.includes('failed to build')")
        .await;
    b.shot("2-known-failure").await;
}

#[tokio::test]
async fn page_restores_every_choice_from_the_url() {
    let b = browser!("restore");
    let f = ApiFarm::start(&[]).await;
    let url = "/?recipe=hello&platform=linux/arm/7&version=v1.0.0&p=example.com/greet&p=example.com/wave@v0.3.0";
    b.client.goto(&f.url(url)).await.unwrap();
    b.until("wave's versions", "return document.querySelector(\"li[data-module='example.com/wave'] .pver select option[value='v0.4.0-rc.1']\")").await;
    let state = b
        .js(
            "const q = (s) => document.querySelector(s);
             return {
               platform: q('input[name=platform]:checked').value,
               version: q('#version').value,
               checked: [...document.querySelectorAll('#catalogue input:checked')].map((i) => i.value),
               wave: q(\"li[data-module='example.com/wave'] .pver select\").value,
               greet: q(\"li[data-module='example.com/greet'] .pver select\").value,
             };",
            vec![],
        )
        .await;
    assert_eq!(
        state,
        json!({"platform": "linux/arm/7", "version": "v1.0.0", "checked": ["example.com/greet", "example.com/wave"],
               "wave": "v0.3.0", "greet": ""})
    );
    // The resolution the page asked for pins exactly those choices.
    b.until(
        "the verdict",
        "return document.getElementById('verdict').textContent.includes('hello v1.0.0 for linux/arm/7')",
    )
    .await;
    // The URL still says the same, so it can be shared as it is.
    let now = b.client.current_url().await.unwrap();
    assert!(now.as_str().ends_with(url), "{now}");
    b.shot("1-restored").await;
}

#[tokio::test]
async fn page_preselects_the_visitors_platform_and_fits_a_phone() {
    let windows =
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36";
    let b = browser!("phone", Options { size: (390, 1600), user_agent: Some(windows.to_owned()) });
    let f = ApiFarm::start(&[]).await;
    b.client.goto(&f.url("/")).await.unwrap();
    b.until("the verdict", "return document.getElementById('verdict').textContent.includes('windows/amd64')").await;
    let checked = b.js("return document.querySelector('input[name=platform]:checked').value", vec![]).await;
    assert_eq!(checked, json!("windows/amd64"));
    // Nothing is wider than the phone's screen.
    let overflow = b.js("return document.documentElement.scrollWidth - window.innerWidth", vec![]).await;
    assert!(overflow.as_i64().unwrap() <= 0, "the page is {overflow} px wider than the screen");
    // Every input has a label.
    let unlabelled = b
        .js(
            "return [...document.querySelectorAll('input:not([type=hidden]), select')]
               .filter((i) => !i.labels || i.labels.length === 0).map((i) => i.outerHTML);",
            vec![],
        )
        .await;
    assert_eq!(unlabelled, json!([]));
    b.shot("1-phone").await;
}

const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";
const SPACE: &str = "\u{E00D}";
const RIGHT: &str = "\u{E014}";
const DOWN: &str = "\u{E015}";

/// Keys pressed on whatever has the focus, as a keyboard user presses them.
async fn press(b: &Browser, keys: &str) {
    let focused = b.client.active_element().await.unwrap();
    focused.send_keys(keys).await.unwrap_or_else(|e| panic!("pressing {keys:?}: {e}"));
}

/// Press Tab until the focus is on `css`. Fails after 60 presses, naming
/// everything the focus went through.
async fn tab_to(b: &Browser, css: &str) {
    const FOCUSED: &str = "const e = document.activeElement;
        return e.id ? '#' + e.id : e.tagName.toLowerCase() + (e.value ? '=' + e.value : '');";
    let mut passed = Vec::new();
    for _ in 0..60 {
        if b.js("return document.activeElement.matches(arguments[0])", vec![json!(css)]).await == json!(true) {
            return;
        }
        press(b, TAB).await;
        passed.push(b.js(FOCUSED, vec![]).await);
    }
    panic!("Tab never reached {css}; the focus went through {passed:?}");
}

/// Whether the focused control shows that it has the focus (a chip's input
/// is invisible: its label is what shows the ring).
const FOCUS_RING: &str = "const e = document.activeElement;
    const shown = e.closest('.chip') ? e.nextElementSibling : e;
    const s = getComputedStyle(shown);
    return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0;";

#[tokio::test]
async fn page_works_from_the_keyboard_alone() {
    let b = browser!("keyboard");
    // No worker: the build the keyboard starts waits in the queue.
    let f = ApiFarm::start(&[]).await;
    b.client.goto(&f.url("/")).await.unwrap();
    b.until("the verdict", "return document.getElementById('verdict').textContent.includes('Will be built')").await;

    // The platforms are one group: Tab enters it on the chosen one, an arrow
    // key chooses the next.
    tab_to(&b, "input[name=platform]:checked").await;
    assert_eq!(b.js(FOCUS_RING, vec![]).await, json!(true), "the focused platform shows no focus ring");
    let next = b
        .js(
            "const all = [...document.querySelectorAll('input[name=platform]')];
             const i = all.findIndex((r) => r.checked);
             return all[(i + 1) % all.length].value;",
            vec![],
        )
        .await;
    press(&b, RIGHT).await;
    let chosen = b.js("return document.querySelector('input[name=platform]:checked').value", vec![]).await;
    assert_eq!(chosen, next);
    b.until(
        "the platform in the URL",
        &format!("return location.search.includes('platform={}')", next.as_str().unwrap()),
    )
    .await;

    // The version chooser answers the arrow keys.
    tab_to(&b, "#version").await;
    assert_eq!(b.js(FOCUS_RING, vec![]).await, json!(true), "the version chooser shows no focus ring");
    let before = b.js("return document.getElementById('version').value", vec![]).await;
    press(&b, DOWN).await;
    let after = b.js("return document.getElementById('version').value", vec![]).await;
    assert_ne!(before, after, "the down arrow did not change the version");

    // Search, then Tab to the one plugin left and tick it with the space bar.
    tab_to(&b, "#search").await;
    press(&b, "GREET whoever").await;
    assert_eq!(b.js(VISIBLE, vec![]).await, json!(["example.com/greet"]));
    tab_to(&b, &plugin_box("example.com/greet")).await;
    assert_eq!(b.js(FOCUS_RING, vec![]).await, json!(true), "the focused plugin shows no focus ring");
    press(&b, SPACE).await;
    b.until("greet in the URL", "return location.search.includes('p=example.com/greet')").await;
    b.shot("1-chosen").await;

    // Enter on Build starts the build, and the page follows it.
    tab_to(&b, "#build").await;
    press(&b, ENTER).await;
    b.until(
        "the queued state",
        "return !document.getElementById('progress').hidden && document.getElementById('step').textContent === 'waiting for a worker'",
    )
    .await;
    assert_eq!(f.build_count().await, 1);
    b.shot("2-queued").await;
}
