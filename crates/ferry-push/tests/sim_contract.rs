//! The simulator's own checks can fail: requests that break a provider's contract —
//! each made by replaying a good request the sender made with one thing changed — are
//! answered as the provider would and recorded as violations. Without this, "no
//! violations" in the sender tests would prove nothing.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{apns_token, fcm_token, note, setup, Setup};
use ferry_push::sim::Request;
use ferry_push::{Outcome, Provider};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde_json::{json, Value};

fn client(s: &Setup, http1: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(s.sim.ca_pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10));
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// Sends `req` again with `edit` applied to its headers and body; the status.
async fn replay(
    s: &Setup,
    c: &reqwest::Client,
    req: &Request,
    edit: impl FnOnce(&mut Vec<(String, String)>, &mut Vec<u8>),
) -> u16 {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "host" | "content-length"))
        .cloned()
        .collect();
    let mut body = req.body.clone();
    edit(&mut headers, &mut body);
    let mut r = c.post(format!("{}{}", s.sim.url(), req.path));
    for (n, v) in headers {
        r = r.header(n, v);
    }
    r.body(body).send().await.unwrap().status().as_u16()
}

fn set(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    headers.retain(|(n, _)| n != name);
    headers.push((name.into(), value.into()));
}

fn json_edit(body: &mut Vec<u8>, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(body).unwrap();
    f(&mut v);
    *body = v.to_string().into_bytes();
}

/// Asserts the newest violation starts with `what`.
fn violated(s: &Setup, count: &mut usize, what: &str) {
    let v = s.sim.violations();
    assert_eq!(v.len(), *count + 1, "expected a violation {what:?}: {v:#?}");
    assert!(
        v[*count].what.starts_with(what),
        "{what:?} vs {:?}",
        v[*count]
    );
    *count += 1;
}

fn p256(path: &std::path::Path) -> EcdsaKeyPair {
    let der = PrivatePkcs8KeyDer::from_pem_file(path).unwrap();
    EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        der.secret_pkcs8_der(),
        &SystemRandom::new(),
    )
    .unwrap()
}

fn jwt_es256(key: &EcdsaKeyPair, header: Value, claims: Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_catches_apns_contract_violations() {
    let s = setup(4).await;
    let apns = s.sender(Provider::Apns);
    assert_eq!(
        apns.send(&s.target(Provider::Apns, &apns_token(1)), &note(1, true))
            .await,
        Outcome::Accepted
    );
    let good = s.sim.requests_of(Provider::Apns).pop().unwrap();
    let c = client(&s, false);
    let mut n = 0;

    assert_eq!(
        replay(&s, &c, &good, |_, _| {}).await,
        200,
        "the replay itself keeps the contract"
    );
    assert!(s.sim.violations().is_empty());
    assert_eq!(
        replay(&s, &c, &good, |h, _| h.retain(|(n, _)| n != "apns-topic")).await,
        400
    );
    violated(&s, &mut n, "MissingTopic");
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(
            h,
            "apns-collapse-id",
            &"c".repeat(65)
        ))
        .await,
        400
    );
    violated(&s, &mut n, "BadCollapseId");
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(h, "apns-id", "not-a-uuid")).await,
        400
    );
    violated(&s, &mut n, "BadMessageId");
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(h, "apns-push-type", "background")).await,
        400
    );
    violated(&s, &mut n, "BadPriority");
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(h, "apns-push-type", "voip2")).await,
        400
    );
    violated(&s, &mut n, "InvalidPushType");
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(h, "apns-expiration", "soon")).await,
        400
    );
    violated(&s, &mut n, "BadExpirationDate");
    assert_eq!(
        replay(&s, &c, &good, |_, b| json_edit(b, |v| {
            v.as_object_mut().unwrap().remove("ferry");
        }))
        .await,
        400
    );
    violated(&s, &mut n, "BadPayload");
    assert_eq!(
        replay(&s, &c, &good, |_, b| json_edit(b, |v| {
            v["aps"].as_object_mut().unwrap().remove("mutable-content");
        }))
        .await,
        400
    );
    violated(&s, &mut n, "BadPayload");
    assert_eq!(
        replay(&s, &c, &good, |_, b| json_edit(b, |v| v["pad"] =
            json!("x".repeat(4100))))
        .await,
        413
    );
    violated(&s, &mut n, "PayloadTooLarge");
    assert_eq!(
        replay(&s, &c, &good, |h, _| h
            .retain(|(n, _)| n != "authorization"))
        .await,
        403
    );
    violated(&s, &mut n, "MissingProviderToken");

    // A JWT signed by another key; one with another kid; one 61 minutes old.
    let other = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap()
            .as_ref(),
        &SystemRandom::new(),
    )
    .unwrap();
    let key = p256(&s.config.apns.as_ref().unwrap().key_file);
    let hdr = json!({"alg": "ES256", "kid": ferry_push::sim::APNS_KEY_ID});
    let claims = json!({"iss": ferry_push::sim::APNS_TEAM_ID, "iat": now()});
    let forged = jwt_es256(&other, hdr.clone(), claims.clone());
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(
            h,
            "authorization",
            &format!("bearer {forged}")
        ))
        .await,
        403
    );
    violated(&s, &mut n, "InvalidProviderToken");
    let wrong_kid = jwt_es256(
        &key,
        json!({"alg": "ES256", "kid": "OTHERKEY01"}),
        claims.clone(),
    );
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(
            h,
            "authorization",
            &format!("bearer {wrong_kid}")
        ))
        .await,
        403
    );
    violated(&s, &mut n, "InvalidProviderToken");
    let old = jwt_es256(
        &key,
        hdr.clone(),
        json!({"iss": ferry_push::sim::APNS_TEAM_ID, "iat": now() - 3700}),
    );
    let fresh = client(&s, false);
    assert_eq!(
        replay(&s, &fresh, &good, |h, _| set(
            h,
            "authorization",
            &format!("bearer {old}")
        ))
        .await,
        403
    );
    violated(&s, &mut n, "ExpiredProviderToken");

    // A second good JWT on a connection that just used another one: Apple's 20 minutes.
    let conn = client(&s, false);
    assert_eq!(replay(&s, &conn, &good, |_, _| {}).await, 200);
    let second = jwt_es256(
        &key,
        hdr,
        json!({"iss": ferry_push::sim::APNS_TEAM_ID, "iat": now() - 1}),
    );
    assert_eq!(
        replay(&s, &conn, &good, |h, _| set(
            h,
            "authorization",
            &format!("bearer {second}")
        ))
        .await,
        429
    );
    violated(&s, &mut n, "TooManyProviderTokenUpdates");

    // HTTP/1.1: APNs is HTTP/2 only.
    assert_eq!(replay(&s, &client(&s, true), &good, |_, _| {}).await, 400);
    violated(&s, &mut n, "BadPath");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_catches_fcm_contract_violations() {
    let s = setup(4).await;
    let fcm = s.sender(Provider::Fcm);
    assert_eq!(
        fcm.send(&s.target(Provider::Fcm, &fcm_token(1)), &note(1, true))
            .await,
        Outcome::Accepted
    );
    let reqs = s.sim.requests_of(Provider::Fcm);
    let (token_req, good) = (&reqs[0], &reqs[1]);
    let c = client(&s, false);
    let mut n = 0;

    assert_eq!(
        replay(&s, &c, good, |_, _| {}).await,
        200,
        "the replay itself keeps the contract"
    );
    assert_eq!(
        replay(&s, &c, good, |_, b| json_edit(b, |v| v["message"]
            ["notification"] =
            json!({"title": "x"})))
        .await,
        400
    );
    violated(&s, &mut n, "INVALID_ARGUMENT");
    assert_eq!(
        replay(&s, &c, good, |_, b| json_edit(b, |v| v["message"]
            ["data"]["badge"] =
            json!(3)))
        .await,
        400
    );
    violated(&s, &mut n, "INVALID_ARGUMENT");
    assert_eq!(
        replay(&s, &c, good, |_, b| json_edit(b, |v| v["message"]
            ["data"]["ferry"] =
            json!("{}")))
        .await,
        400
    );
    violated(&s, &mut n, "INVALID_ARGUMENT");
    assert_eq!(
        replay(&s, &c, good, |_, b| json_edit(b, |v| v["message"]
            ["android"]["ttl"] =
            json!("3600")))
        .await,
        400
    );
    violated(&s, &mut n, "INVALID_ARGUMENT");
    assert_eq!(
        replay(&s, &c, good, |_, b| json_edit(b, |v| v["message"]
            ["android"]["priority"] =
            json!("high")))
        .await,
        400
    );
    violated(&s, &mut n, "INVALID_ARGUMENT");
    assert_eq!(
        replay(&s, &c, good, |_, b| json_edit(b, |v| v["message"]
            ["data"]["big"] =
            json!("x".repeat(4097))))
        .await,
        400
    );
    violated(&s, &mut n, "INVALID_ARGUMENT");
    assert_eq!(
        replay(&s, &c, good, |h, _| set(
            h,
            "authorization",
            "Bearer ya29.made-up"
        ))
        .await,
        401
    );
    violated(&s, &mut n, "UNAUTHENTICATED");

    // The token endpoint: the replayed grant is fine; an assertion for another audience,
    // or signed by another key, is not.
    assert_eq!(replay(&s, &c, token_req, |_, _| {}).await, 200);
    let sa: Value = serde_json::from_str(
        &std::fs::read_to_string(&s.config.fcm.as_ref().unwrap().service_account_file).unwrap(),
    )
    .unwrap();
    let der =
        PrivatePkcs8KeyDer::from_pem_slice(sa["private_key"].as_str().unwrap().as_bytes()).unwrap();
    let rsa = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    let t = now();
    let claims = json!({"iss": ferry_push::sim::FCM_CLIENT_EMAIL, "scope": ferry_push::fcm::SCOPE,
        "aud": "https://oauth2.googleapis.com/token", "iat": t, "exp": t + 3600});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0; rsa.public().modulus_len()];
    rsa.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    let wrong_aud = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
    let form = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={wrong_aud}"
    );
    assert_eq!(
        replay(&s, &c, token_req, |_, b| *b = form.into_bytes()).await,
        400
    );
    violated(&s, &mut n, "invalid_grant");
    let tampered = {
        let good_form = String::from_utf8(token_req.body.clone()).unwrap();
        good_form.replace("assertion=ey", "assertion=eY")
    };
    assert_eq!(
        replay(&s, &c, token_req, |_, b| *b = tampered.into_bytes()).await,
        400
    );
    violated(&s, &mut n, "invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_catches_web_push_contract_violations() {
    let s = setup(4).await;
    let wp = s.sender(Provider::WebPush);
    assert_eq!(
        wp.send(&s.target(Provider::WebPush, "w1"), &note(1, true))
            .await,
        Outcome::Accepted
    );
    let good = s.sim.requests_of(Provider::WebPush).pop().unwrap();
    let c = client(&s, true);
    let mut n = 0;

    assert_eq!(
        replay(&s, &c, &good, |_, _| {}).await,
        201,
        "the replay itself keeps the contract"
    );
    assert_eq!(
        replay(&s, &c, &good, |h, _| h.retain(|(n, _)| n != "ttl")).await,
        400
    );
    violated(&s, &mut n, "400");
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(h, "urgency", "urgent")).await,
        400
    );
    violated(&s, &mut n, "400");
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(h, "topic", &"t".repeat(33))).await,
        400
    );
    violated(&s, &mut n, "400");
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(h, "content-encoding", "aesgcm")).await,
        415
    );
    violated(&s, &mut n, "415");
    assert_eq!(replay(&s, &c, &good, |_, b| b.resize(4097, 0)).await, 413);
    violated(&s, &mut n, "413");
    assert_eq!(replay(&s, &c, &good, |_, b| b[20] = 64).await, 400);
    violated(&s, &mut n, "400");
    assert_eq!(
        replay(&s, &c, &good, |h, _| h
            .retain(|(n, _)| n != "authorization"))
        .await,
        401
    );
    violated(&s, &mut n, "401");

    let auth = good.header("authorization").unwrap().to_owned();
    let (other_pub, _) = ferry_push::sim::throwaway_subscription();
    let jwt = auth
        .trim_start_matches("vapid t=")
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(
            h,
            "authorization",
            &format!("vapid t={jwt}, k={other_pub}")
        ))
        .await,
        403
    );
    violated(&s, &mut n, "403");
    let key = p256(&s.config.webpush.as_ref().unwrap().vapid_private_key_file);
    let k = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
    let hdr = json!({"typ": "JWT", "alg": "ES256"});
    let wrong_aud = jwt_es256(
        &key,
        hdr.clone(),
        json!({"aud": "https://elsewhere.example", "exp": now() + 3600, "sub": "mailto:a@b.c"}),
    );
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(
            h,
            "authorization",
            &format!("vapid t={wrong_aud}, k={k}")
        ))
        .await,
        401
    );
    violated(&s, &mut n, "401");
    let too_long = jwt_es256(
        &key,
        hdr.clone(),
        json!({"aud": s.sim.url(), "exp": now() + 25 * 3600, "sub": "mailto:a@b.c"}),
    );
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(
            h,
            "authorization",
            &format!("vapid t={too_long}, k={k}")
        ))
        .await,
        401
    );
    violated(&s, &mut n, "401");
    let no_sub = jwt_es256(&key, hdr, json!({"aud": s.sim.url(), "exp": now() + 3600}));
    assert_eq!(
        replay(&s, &c, &good, |h, _| set(
            h,
            "authorization",
            &format!("vapid t={no_sub}, k={k}")
        ))
        .await,
        401
    );
    violated(&s, &mut n, "401");
}
