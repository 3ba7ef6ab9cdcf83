// A Spring Boot app as its authors would write it: Spring Cloud Bindings turns the binding
// projected under $SERVICE_BINDING_ROOT into spring.kafka.*, spring.rabbitmq.* and
// spring.data.redis.* properties, Boot's auto-configuration builds the real clients from them,
// and one message is published to the topic the binding names (k8s.bindings.<name>.topic.<t>).
//
// Usage: java -cp ... dev.switchyard.readers.BindingReaderApp KIND BINDING_NAME LOGICAL_TOPIC PAYLOAD
//   KIND: kafka | rabbitmq | redis
// Exits 0 once the broker has confirmed the message.

package dev.switchyard.readers;

import java.util.Map;
import java.util.concurrent.TimeUnit;

import org.springframework.amqp.rabbit.core.RabbitTemplate;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.context.ConfigurableApplicationContext;
import org.springframework.data.redis.connection.stream.StreamRecords;
import org.springframework.data.redis.core.StringRedisTemplate;
import org.springframework.kafka.core.KafkaTemplate;

@SpringBootApplication
public class BindingReaderApp {

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: BindingReaderApp KIND BINDING_NAME LOGICAL_TOPIC PAYLOAD");
            System.exit(2);
        }
        String kind = args[0], binding = args[1], logical = args[2], payload = args[3];
        try (ConfigurableApplicationContext ctx = SpringApplication.run(BindingReaderApp.class)) {
            String topic = ctx.getEnvironment()
                    .getRequiredProperty("k8s.bindings." + binding + ".topic." + logical);
            switch (kind) {
                case "kafka" -> {
                    @SuppressWarnings("unchecked")
                    KafkaTemplate<String, String> kafka = ctx.getBean(KafkaTemplate.class);
                    kafka.send(topic, payload).get(30, TimeUnit.SECONDS);
                }
                case "rabbitmq" -> {
                    RabbitTemplate rabbit = ctx.getBean(RabbitTemplate.class);
                    rabbit.invoke(ops -> {
                        ops.convertAndSend(topic, "any", payload);
                        ops.waitForConfirmsOrDie(10_000);
                        return null;
                    });
                }
                case "redis" -> ctx.getBean(StringRedisTemplate.class).opsForStream()
                        .add(StreamRecords.string(Map.of("data", payload)).withStreamKey(topic));
                default -> throw new IllegalArgumentException("unknown kind " + kind);
            }
            System.out.println(kind + ": published to " + topic);
        }
        System.exit(0);
    }
}
