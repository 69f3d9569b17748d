/**
 * `@exactly-once/rabbitmq/spi`: what the SDK's own tools (the CLI's dead-letter replay) share with
 * the consumer, so that a copy is made one way. Not for services.
 */

export { giveBackConfirmSlot } from './channel.js';
export { copyOptions } from './delivery.js';
