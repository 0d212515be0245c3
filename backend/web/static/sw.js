/* The owner portal's service worker (served as /portal/sw.js, scope /portal): shows the owner's Web Push
 * notifications (their payload is decrypted by the browser) and opens the portal when one is tapped. */
"use strict";
self.addEventListener("push", function (event) {
  var data = {};
  try { data = event.data ? event.data.json() : {}; } catch (e) { data = { title: "Bikeguard", body: event.data.text() }; }
  event.waitUntil(self.registration.showNotification(data.title || "Bikeguard", {
    body: data.body || "",
    tag: data.tag,            // the notification's key: a resend replaces, never doubles
    icon: "/assets/web/icon.svg",
    data: { url: "/portal" }
  }));
});
self.addEventListener("notificationclick", function (event) {
  event.notification.close();
  event.waitUntil(self.clients.matchAll({ type: "window", includeUncontrolled: true }).then(function (list) {
    for (var i = 0; i < list.length; i++) {
      if (new URL(list[i].url).pathname === "/portal" && "focus" in list[i]) { return list[i].focus(); }
    }
    return self.clients.openWindow("/portal");
  }));
});
