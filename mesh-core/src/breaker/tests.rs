use std::task::Poll;

use tokio_test::{assert_pending, assert_ready_ok};
use tower_test::mock;

use super::*;

fn limits(max_requests: u32, max_pending_requests: Option<u32>) -> CircuitBreakers {
    CircuitBreakers {
        max_requests,
        max_pending_requests,
    }
}

fn overloaded(e: BoxError) -> Overloaded {
    e.downcast::<Overloaded>()
        .map(|b| *b)
        .unwrap_or_else(|e| panic!("not Overloaded: {e}"))
}

#[tokio::test]
async fn trips_at_max_requests_and_recovers() {
    let layer = CircuitBreakerLayer::new(limits(2, None));
    let (mut a, mut handle) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut b, _h2) = mock::spawn_layer::<(), (), _>(layer.clone());
    handle.allow(10);

    assert_ready_ok!(a.poll_ready());
    let f1 = a.call(());
    assert_ready_ok!(a.poll_ready());
    let f2 = a.call(());
    assert_eq!(layer.limits().in_flight(), 2);

    // The third, on another service of the same cluster, is refused at once.
    assert_ready_ok!(b.poll_ready());
    let e = overloaded(b.call(()).await.unwrap_err());
    assert_eq!(e.limit(), Limit::MaxRequests);
    assert_eq!(e.max(), 2);
    assert_eq!(
        e.to_string(),
        "circuit breaker open: max_requests (2) reached"
    );

    // A response frees a slot.
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(());
    f1.await.unwrap();
    assert_eq!(layer.limits().in_flight(), 1);
    assert_ready_ok!(b.poll_ready());
    let f3 = b.call(());
    drop(f2); // dropping a future frees its slot too
    drop(f3);
    assert_eq!(layer.limits().in_flight(), 0);
}

#[tokio::test]
async fn pending_is_counted_while_waiting() {
    let layer = CircuitBreakerLayer::new(limits(10, Some(1)));
    let (mut a, mut handle) = mock::spawn_layer::<(), (), _>(layer.clone());
    handle.allow(0);
    // `a` waits for the inner service: one pending, counted once however often it is polled.
    assert_pending!(a.poll_ready());
    assert_pending!(a.poll_ready());
    assert_eq!(layer.limits().pending(), 1);
    // Ready again: `a` stops pending.
    handle.allow(1);
    assert_ready_ok!(a.poll_ready());
    assert_eq!(layer.limits().pending(), 0);
}

#[tokio::test]
async fn second_waiter_is_refused() {
    let limits = Limits::new(limits(10, Some(1)));
    let (inner_a, mut ha) = mock::pair::<(), ()>();
    let (inner_b, mut hb) = mock::pair::<(), ()>();
    ha.allow(0);
    hb.allow(0);
    let mut a = tokio_test::task::spawn(CircuitBreaker::with_limits(inner_a, limits.clone()));
    let mut b = tokio_test::task::spawn(CircuitBreaker::with_limits(inner_b, limits.clone()));
    assert!(
        a.enter(|cx, mut s| tower::Service::poll_ready(&mut *s, cx))
            .is_pending()
    );
    // The second waiter is over max_pending: ready, and the call fails fast.
    let r = b.enter(|cx, mut s| tower::Service::poll_ready(&mut *s, cx));
    assert!(matches!(r, Poll::Ready(Ok(()))));
    let e = overloaded(
        b.enter(|_, mut s| tower::Service::call(&mut *s, ()))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.limit(), Limit::MaxPendingRequests);
    // The refused call took no request slot.
    assert_eq!(limits.in_flight(), 1);
    assert_eq!(limits.pending(), 1);
}

#[tokio::test]
async fn call_without_poll_ready_is_refused_not_a_panic() {
    let (mut s, _h) = mock::spawn_layer::<(), (), _>(CircuitBreakerLayer::new(limits(1, None)));
    assert!(s.call(()).await.unwrap_err().is::<Overloaded>());
}

#[tokio::test]
async fn zero_max_requests_refuses_everything() {
    let (mut s, _h) = mock::spawn_layer::<(), (), _>(CircuitBreakerLayer::new(limits(0, None)));
    assert_ready_ok!(s.poll_ready());
    assert!(s.call(()).await.unwrap_err().is::<Overloaded>());
}

#[tokio::test]
async fn inner_errors_pass_through_and_free_the_slot() {
    let layer = CircuitBreakerLayer::new(limits(1, None));
    let (mut s, mut h) = mock::spawn_layer::<(), (), _>(layer.clone());
    h.allow(1);
    assert_ready_ok!(s.poll_ready());
    let f = s.call(());
    let (_, send) = h.next_request().await.unwrap();
    send.send_error(std::io::Error::other("boom"));
    let e = f.await.unwrap_err();
    assert_eq!(e.to_string(), "boom");
    assert_eq!(layer.limits().in_flight(), 0);
}

#[tokio::test]
async fn a_refusal_is_reconsidered_on_the_next_poll() {
    let layer = CircuitBreakerLayer::new(limits(1, None));
    let (mut a, mut h) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut b, _hb) = mock::spawn_layer::<(), (), _>(layer.clone());
    h.allow(1);
    assert_ready_ok!(a.poll_ready());
    let f = a.call(());
    assert_ready_ok!(b.poll_ready()); // refused: the one slot is taken
    drop(f);
    assert_ready_ok!(b.poll_ready()); // the slot is free again: reserved this time
    assert_eq!(layer.limits().in_flight(), 1);
}
