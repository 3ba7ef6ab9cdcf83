//! The credentials apps get (`appCredentialsSecretRef`): with it, the binding carries an app
//! user's credentials and never the ones the operator provisions with; without it, status and
//! `plan` say that apps hold the operator's access. Against the real RabbitMQ, whose app user
//! may read and write but not configure, so the app's round trip proves the binding's user is
//! the app's.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use switchyard::api::MessageBroker;
use switchyard::brokers::OPERATOR_CREDENTIALS_NOTE;

use crate::plan::{switchyard, text, write_manifest};
use crate::rabbitmq::{broker, create_user, delete_user, env_yaml};
use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

fn manifest(env: &str) -> String {
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: MessageBroker\nmetadata: {{name: bus}}\nspec:\n  deletionPolicy: Delete\n  topics:\n    - name: orders\n      subscriptions: [{{name: billing}}]\n  envs:\n    - {env}\n"
    )
}

/// The binding's entries as text.
async fn binding_entries(
    client: &kube::Client,
    ns: &str,
) -> std::collections::BTreeMap<String, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.get("bus-prd")
        .await
        .expect("binding Secret")
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

async fn env_notes(client: &kube::Client, ns: &str) -> Vec<String> {
    let mbs: Api<MessageBroker> = Api::namespaced(client.clone(), ns);
    mbs.get("bus")
        .await
        .expect("MessageBroker")
        .status
        .and_then(|s| s.envs.into_iter().next())
        .map(|e| e.notes)
        .unwrap_or_default()
}

async fn plan(ns: &str, manifest: &str) -> String {
    let file = write_manifest(manifest);
    text(&switchyard(&["plan", "-n", ns, "-f", file.0.to_str().expect("path")]).await)
}

#[tokio::test]
async fn rabbitmq_apps_get_their_own_user_never_the_operators() {
    let b = broker();
    let (client, ns) = setup("app-creds").await;
    let user = unique("app-user");
    let first_password = format!("{user}-first-pw");
    // Read and write, but no configure: the app cannot declare or delete anything.
    create_user(&b, &user, &first_password, "", Some(("^$", ".*", ".*"))).await;
    crate::rabbitmq::put_credentials(&client, &ns, &b).await;
    put_secret(
        &client,
        &ns,
        "orders-app",
        &[("username", &user), ("password", &first_password)],
    )
    .await;

    // First without the app Secret: the binding holds the operator's user, and status and plan
    // say so.
    let operator_only = manifest(&env_yaml(&b));
    let ctl = start_real_controller(client.clone(), &ns);
    apply_mb(&client, &ns, &operator_only).await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;
    assert_eq!(
        binding_entries(&client, &ns).await.get("password"),
        Some(&b.password),
        "without appCredentialsSecretRef the binding carries the operator's password"
    );
    let notes = env_notes(&client, &ns).await;
    assert!(
        notes.iter().any(|n| n == OPERATOR_CREDENTIALS_NOTE),
        "status warns: {notes:?}"
    );
    let out = plan(&ns, &operator_only).await;
    assert!(
        out.contains("note: the binding carries the credentials the operator provisions with"),
        "plan warns:\n{out}"
    );

    // With it: the app's user, nothing of the operator's, and no warning.
    let env = env_yaml(&b);
    let with_app = manifest(&format!(
        "{}, appCredentialsSecretRef: {{name: orders-app}}}}",
        env.strip_suffix('}').expect("a flow mapping")
    ));
    apply_mb(&client, &ns, &with_app).await;
    wait_until(TIMEOUT, "the binding names the app user", async || {
        binding_entries(&client, &ns).await.get("username") == Some(&user)
    })
    .await;
    let entries = binding_entries(&client, &ns).await;
    let leaked: Vec<&String> = entries
        .iter()
        .filter(|(_, v)| v.contains(&b.password))
        .map(|(k, _)| k)
        .collect();
    assert!(
        leaked.is_empty(),
        "operator credentials in the binding: {leaked:?}"
    );
    assert_eq!(entries.get("username"), Some(&user));
    assert_eq!(entries.get("password"), Some(&first_password));
    wait_until(TIMEOUT, "the warning leaves status", async || {
        !env_notes(&client, &ns)
            .await
            .iter()
            .any(|n| n == OPERATOR_CREDENTIALS_NOTE)
    })
    .await;
    let out = plan(&ns, &with_app).await;
    assert!(
        !out.contains(OPERATOR_CREDENTIALS_NOTE) && out.contains("nothing to do"),
        "plan has nothing to say:\n{out}"
    );

    // The app's user works for what an app does: a round trip through the client library.
    binding_round_trip(&client, &ns, "as the app user").await;

    // Rotating the app's password reaches the binding; the operator's stays out.
    let second_password = format!("{user}-second-pw");
    put_secret(
        &client,
        &ns,
        "orders-app",
        &[("username", &user), ("password", &second_password)],
    )
    .await;
    wait_until(
        TIMEOUT,
        "the rotated password reaches the binding",
        async || binding_entries(&client, &ns).await.get("password") == Some(&second_password),
    )
    .await;
    assert!(
        !binding_entries(&client, &ns)
            .await
            .values()
            .any(|v| v.contains(&b.password)),
        "still no operator password after the rotation"
    );
    ctl.stop().await;
    delete_user(&b, &user).await;
}
