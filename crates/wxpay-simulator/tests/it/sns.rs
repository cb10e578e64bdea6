//! jscode2session and the login helper.

use wxpay_protocol::sns::Code2Session;
use wxpay_protocol::{AppId, AppSecret, Error};
use wxpay_simulator::{TEST_APP_SECRET, TEST_APPID};

use crate::support::{Env, spawn};

async fn code(env: &Env, user: &str) -> String {
    let (status, v) = env
        .post_json(
            "/simulator/login",
            serde_json::json!({"appid": TEST_APPID, "user": user}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["code"].as_str().unwrap().to_owned()
}

async fn session(env: &Env, secret: &str, code: &str) -> Result<wxpay_protocol::sns::Session, Error> {
    let call = Code2Session::new(AppId::new(TEST_APPID).unwrap(), AppSecret::new(secret).unwrap(), code)?;
    let body = env
        .http
        .get(env.url(&call.path_and_query()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    Code2Session::decode(&body)
}

#[tokio::test]
async fn a_login_code_gives_a_stable_openid_once() {
    let env = spawn().await;
    let c1 = code(&env, "alice").await;
    let s1 = session(&env, TEST_APP_SECRET, &c1).await.unwrap();
    assert_eq!(s1.openid.len(), 28);
    assert!(!s1.session_key.expose().is_empty());
    let s2 = session(&env, TEST_APP_SECRET, &code(&env, "alice").await)
        .await
        .unwrap();
    assert_eq!(s1.openid, s2.openid, "stable per (appid, user)");
    let s3 = session(&env, TEST_APP_SECRET, &code(&env, "bob").await).await.unwrap();
    assert_ne!(s1.openid, s3.openid);
    // Each redemption its own session_key, all of them listed for a leak test of the client.
    let issued = [&s1, &s2, &s3].map(|s| s.session_key.expose().to_owned());
    assert_eq!(env.sim.simulator().session_keys(), issued);
    // The same code twice: 40163.
    assert!(matches!(
        session(&env, TEST_APP_SECRET, &c1).await,
        Err(Error::Sns { errcode: 40163, .. })
    ));
}

#[tokio::test]
async fn bad_codes_and_secrets_get_wechat_errcodes() {
    let env = spawn().await;
    assert!(matches!(
        session(&env, TEST_APP_SECRET, "nosuchcode").await,
        Err(Error::Sns { errcode: 40029, .. })
    ));
    let c = code(&env, "carol").await;
    match session(&env, "wrongsecret", &c).await {
        Err(Error::Sns { errcode: 40125, errmsg }) => assert!(errmsg.contains("rid: "), "{errmsg}"),
        other => panic!("{other:?}"),
    }
    // The code survives a failed attempt with a wrong secret.
    assert!(session(&env, TEST_APP_SECRET, &c).await.is_ok());
    let (status, _) = env
        .post_json(
            "/simulator/login",
            serde_json::json!({"appid": "wx0000000000000000", "user": "x"}),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn jscode2session_by_post_is_answered_like_a_get_with_json() {
    let env = spawn().await;
    let code = code(&env, "post-user").await;
    let call = Code2Session::new(
        AppId::new(TEST_APPID).unwrap(),
        AppSecret::new(TEST_APP_SECRET).unwrap(),
        &code,
    )
    .unwrap();
    let r = env.http.post(env.url(&call.path_and_query())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let session = Code2Session::decode(&r.bytes().await.unwrap()).unwrap();
    assert!(!session.openid.is_empty());
    // Without its parameters: still 200, with WeChat's errcode.
    let r = env.http.post(env.url("/sns/jscode2session")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("errcode"));
}
