//! What the download page asks the API: listed recipes with catalogues,
//! one recipe with its figures, versions, and dry-run resolution; and the
//! page itself as the server renders it (what a browser without JavaScript
//! gets).

use serde_json::json;

use crate::farm::InProc;

#[tokio::test]
async fn recipes_list_only_listed_ones_and_name_any_one() {
    let api = InProc::new().await;
    let list = api.get("/api/recipes").await.json();
    let names: Vec<&str> = list["recipes"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"hello"), "{names:?}");
    for test_only in ["fail", "sleep", "escape"] {
        assert!(!names.contains(&test_only), "{test_only} is unlisted: {names:?}");
    }
    let hello = list["recipes"].as_array().unwrap().iter().find(|r| r["name"] == "hello").unwrap();
    assert_eq!(hello["catalogue"][0]["module"], "example.com/greet");
    assert_eq!(hello["catalogue"][0]["docs"], "https://example.com/docs/greet");
    assert_eq!(hello["images"], true);

    // One recipe, unlisted or not, with its figures.
    let fail = api.get("/api/recipes/fail").await;
    assert_eq!(fail.status, 200, "{}", fail.text());
    assert_eq!(fail.json()["listed"], false);
    assert_eq!(fail.json()["typical_secs"], json!(null), "never built");
    api.get("/api/recipes/nope").await.error(404, "unknown_recipe");
    api.get("/api/recipes/NOPE").await.error(400, "invalid_recipe");
}

#[tokio::test]
async fn versions_of_the_product_and_of_each_plugin() {
    let api = InProc::new().await;
    let v = api.get("/api/recipes/hello/versions").await.json();
    assert_eq!(v["versions"], json!(["v1.2.0-beta.1", "v1.1.0", "v1.0.0"]), "newest first");
    assert_eq!(v["latest"], "v1.1.0", "latest skips prereleases");
    let v = api.get("/api/recipes/hello/versions?module=example.com/wave").await.json();
    assert_eq!(v["module"], "example.com/wave");
    assert_eq!(v["latest"], "v0.3.0");
    api.get("/api/recipes/hello/versions?module=other.org/x").await.error(400, "plugin_not_allowed");
    api.get("/api/recipes/hello/versions?module=example.com/unlisted").await.error(400, "unknown_plugin");
    api.get("/api/recipes/hello/versions?module=a%20b").await.error(400, "invalid_module");
}

#[tokio::test]
async fn resolve_computes_the_key_without_queueing() {
    let api = InProc::new().await;
    let q = "/api/resolve?recipe=hello&platform=linux/arm/7&p=example.com/greet@v0.1.0&p=example.com/wave";
    let r = api.get(q).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["version"], "v1.1.0");
    assert_eq!(j["platform"], "linux/arm/7");
    assert_eq!(
        j["plugins"],
        json!([{"module": "example.com/greet", "version": "v0.1.0"}, {"module": "example.com/wave", "version": "v0.3.0"}])
    );
    assert_eq!((j["state"].clone(), j["ready"].clone()), (json!(null), json!(false)));
    assert_eq!(j["file_name"], "hello_linux_arm7_custom");
    assert_eq!(
        j["compat"],
        "/api/compat?recipe=hello&os=linux&arch=arm&arm=7&version=v1.1.0&p=example.com/greet@v0.1.0&p=example.com/wave@v0.3.0"
    );
    // A plugin pinned below its latest: the image is named by the build.
    let key = j["key"].as_str().unwrap().to_owned();
    assert_eq!(j["image"], format!("hello/example.com__greet/example.com__wave:bk-{key}"));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM builds").fetch_one(api.db.pool()).await.unwrap();
    assert_eq!(count, 0, "resolving queues nothing");

    // The same build through the API: resolve then knows it.
    let body = json!({"recipe": "hello", "os": "linux", "arch": "arm", "arm": 7,
        "plugins": [{"module": "example.com/wave"}, {"module": "example.com/greet", "version": "v0.1.0"}]});
    let created = api.post("/api/builds", body.to_string()).await.json();
    assert_eq!(created["key"], key.as_str(), "the dry run's key is the build's");
    let j = api.get(q).await.json();
    assert_eq!(j["state"], "queued");
    assert_eq!(j["build"]["key"], key.as_str());

    // Unpinned plugins: the image is named by its plugins and version.
    let j = api.get("/api/resolve?recipe=hello&os=linux&arch=amd64&p=example.com/greet").await.json();
    assert_eq!(j["image"], "hello/example.com__greet:v1.1.0");
    let j = api.get("/api/resolve?recipe=hello&os=windows&arch=amd64").await.json();
    assert_eq!((j["image"].clone(), j["file_name"].clone()), (json!(null), json!("hello_windows_amd64_custom.exe")));

    // Mistakes are the compat API's errors.
    api.get("/api/resolve?recipe=hello&os=plan9&arch=amd64").await.error(400, "unknown_platform");
    api.get("/api/resolve?recipe=hello&platform=linux/amd64&p=other.org/x").await.error(400, "plugin_not_allowed");
}

#[tokio::test]
async fn the_page_is_a_whole_form_without_javascript() {
    let api = InProc::new().await;
    let page = api.get("/?recipe=hello&platform=linux/arm64&version=v1.0.0&p=example.com/shout&p=other.org/x").await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    // minijinja writes '/' in values as "&#x2f;", which browsers read back as '/'.
    let html = page.text().replace("&#x2f;", "/");
    assert!(html.contains(r#"<form id="form" action="/api/compat" method="get">"#), "a real form");
    assert!(html.contains(r#"value="linux/arm64" checked"#), "the URL's platform");
    assert!(html.contains(r#"<option value="v1.0.0" selected>"#), "the URL's version");
    assert!(html.contains(r#"name="p" value="example.com/shout" id="plugin-2" checked"#), "the URL's plugin");
    assert!(html.contains("Plugin &quot;other.org/x&quot; is not offered"), "a plugin it cannot take is said");
    assert!(!html.contains(">fail<"), "test recipes are not in the product list");
    // The form's query is one the compat API understands.
    let q = "/api/resolve?recipe=hello&platform=linux%2Farm64&version=v1.0.0&p=example.com%2Fshout&p=";
    assert_eq!(api.get(q).await.json()["platform"], "linux/arm64");

    // Whatever the URL says stays text.
    let page = api.get("/?recipe=%3Cscript%3E&p=%22%3E%3Cimg%20src=x%3E").await.text().replace("&#x2f;", "/");
    assert!(!page.contains("<script>alert") && !page.contains("<img src=x>"), "escaped");
    assert!(page.contains("There is no product called &quot;&lt;script&gt;&quot;"), "{page}");
}

#[tokio::test]
async fn proxy_recipes_take_typed_module_paths() {
    let api = InProc::with(|c| c.recipes.get_mut("hello").unwrap().plugins.go_proxy = true).await;
    let page =
        api.get("/?recipe=hello&p=example.com/typed@v1.2.3&p=example.com/greet").await.text().replace("&#x2f;", "/");
    assert!(page.contains(r#"<input type="text" id="typed" name="p""#), "a box for any allowed module path");
    assert!(page.contains(r#"data-module="example.com/typed""#), "the URL's typed plugin is a row");
    assert!(page.contains(r#"value="example.com/typed" id="plugin-5" checked data-version="v1.2.3""#), "{page}");
    let plain = InProc::new().await.get("/?recipe=hello&p=example.com/typed").await.text();
    assert!(!plain.contains(r#"id="typed""#), "a recipe without the proxy takes only what it lists");
    assert!(plain.contains("is not offered for hello"));
}
