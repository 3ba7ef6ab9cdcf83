//! The app of the README's "Writing an app": publishes one order and prints what the billing
//! subscription receives, on whichever broker the binding names. Run it with the binding
//! directory of a MessageBroker env (as projected into a pod):
//!
//! ```sh
//! SERVICE_BINDING_ROOT=/bindings cargo run --example app
//! ```

use switchyard::client::{Client, Message};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The binding as the Service Binding spec projects it into the pod.
    let root = std::env::var("SERVICE_BINDING_ROOT").unwrap_or("/bindings".into());
    let client = Client::from_binding(format!("{root}/message-bus-prd")).await?;

    let order = Message::new(br#"{"order":42}"#.to_vec())
        .with_key("customer-7") // the ordering key on ordered topics
        .with_header("trace-id", "abc");
    client.publisher("order-created").publish(order).await?; // returns once confirmed

    let mut billing = client.subscriber("order-created", "billing").await?;
    loop {
        let delivery = billing.next().await?;
        println!(
            "{} (attempt {})",
            String::from_utf8_lossy(&delivery.message.payload),
            delivery.attempt
        );
        delivery.ack().await?; // or .nack() to have it redelivered
    }
}
