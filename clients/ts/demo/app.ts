/**
 * The page of `homepocket-relay demo --web`: two phones side by side, each a `Device`
 * of this package with its own key, pairing with the six digits and the SAS, syncing
 * through the relay, going offline and catching up. Bundled by esbuild into
 * client/web/demo.js (`npm run build:demo`).
 */
import { Device, Identity, invite, runGenerator, runJoiner, subprotocolWebSocket, type Entry } from "../src/index.js";

interface Phone {
  device: Device;
  root: HTMLElement;
  q: <T extends HTMLElement = HTMLElement>(selector: string) => T;
}

function phone(id: string, name: string, relay: string): Phone {
  const root = document.getElementById(id)!;
  const template = document.getElementById("phone-screen") as HTMLTemplateElement;
  root.appendChild(template.content.cloneNode(true));
  const device = new Device(relay, Identity.generate(), { name, webSocket: subprotocolWebSocket });
  const q = <T extends HTMLElement = HTMLElement>(selector: string) => root.querySelector(selector) as T;
  q(".name").textContent = `${name}'s phone`;
  return { device, root, q };
}

const show = (el: HTMLElement, visible = true) => el.classList.toggle("hidden", !visible);
const stepDone = (step: string) => document.querySelector(`#steps [data-step="${step}"]`)?.classList.add("done");

function money(cents: number, currency: string): string {
  const sign = cents < 0 ? "−" : "+";
  return `${sign}${(Math.abs(cents) / 100).toFixed(2)} ${currency}`;
}

function render(p: Phone, names: Map<string, string>): void {
  const d = p.device;
  const status = p.q(".status");
  const session = d.session;
  const text = !d.bookId
    ? "not in a book yet"
    : !session
      ? `offline · position ${d.state.position.seq} · ${d.state.outbox.size} waiting to send`
      : session.live
        ? `live · position ${d.state.position.seq} · ${d.state.outbox.size} waiting for ack`
        : "connecting…";
  status.classList.toggle("live", !!session?.live);
  status.classList.toggle("offline", !!d.bookId && !session);
  p.q(".status-text").textContent = text;
  const list = p.q("ul.entries");
  const entries: Entry[] = d.entries();
  list.replaceChildren(
    ...entries.map((e) => {
      const li = document.createElement("li");
      li.dataset.entry = e.entryId;
      const left = document.createElement("span");
      left.innerHTML = `<span class="note"></span><br><span class="by"></span>`;
      left.querySelector(".note")!.textContent = e.note;
      left.querySelector(".by")!.textContent = `by ${names.get(e.by) ?? e.by.slice(0, 8)}`;
      const amt = document.createElement("span");
      amt.className = `amt ${e.amountCents < 0 ? "neg" : "pos"}`;
      amt.textContent = money(e.amountCents, e.currency);
      li.append(left, amt);
      return li;
    }),
  );
  p.q(".balance").textContent = entries.length ? `balance ${money(d.ledger.balanceCents(), "EUR")}` : "";
  p.q(".toggle").textContent = session ? "Go offline" : "Go online";
}

/** The SAS screen: resolves when the user presses one of the two buttons. */
function compareOn(p: Phone): (code: string) => Promise<boolean> {
  return (code) =>
    new Promise((resolve) => {
      show(p.q(".invite-box"), false);
      show(p.q(".join-box"), false);
      p.q(".sas").textContent = code;
      show(p.q(".compare-box"));
      p.q(".pair-note").textContent = "";
      const answer = (match: boolean) => () => {
        show(p.q(".compare-box"), false);
        p.q(".pair-note").textContent = match ? "Waiting for the other phone…" : "Pairing rejected.";
        resolve(match);
      };
      p.q(".match").onclick = answer(true);
      p.q(".nomatch").onclick = answer(false);
    });
}

function ledgerReady(p: Phone, names: Map<string, string>): void {
  show(p.q(".pairing"), false);
  for (const el of p.root.querySelectorAll<HTMLElement>(".ledger")) show(el);
  const d = p.device;
  d.subscribe(() => render(p, names));
  p.q(".add").onclick = () => {
    const note = p.q<HTMLInputElement>("input.note").value.trim() || "Something";
    const amount = Number(p.q<HTMLInputElement>("input.amount").value.replace(",", ".") || "-1");
    if (!Number.isFinite(amount)) return;
    d.addEntry(Math.round(amount * 100), note);
    p.q<HTMLInputElement>("input.note").value = "";
    p.q<HTMLInputElement>("input.amount").value = "";
    stepDone("sync");
  };
  p.q(".toggle").onclick = async () => {
    if (d.session) {
      await d.goOffline();
      stepDone("offline");
    } else d.goOnline();
    render(p, names);
  };
  d.goOnline();
  render(p, names);
}

async function main(): Promise<void> {
  const { relay } = (await (await fetch("/config.json")).json()) as { relay: string };
  const alice = phone("alice", "Alice", relay);
  const bob = phone("bob", "Bob", relay);
  const names = new Map([
    [alice.device.deviceId, "Alice"],
    [bob.device.deviceId, "Bob"],
  ]);
  const footer = document.getElementById("server-view")!;
  footer.textContent = `Relay: ${relay}. It sees device ids (hashes of public keys), sizes of ciphertext and times: never an amount, a note or a key.`;

  await alice.device.createBook();
  await bob.device.register();
  render(alice, names);
  render(bob, names);
  show(alice.q(".invite-box"));
  show(bob.q(".join-box"));

  alice.q(".invite").onclick = async () => {
    alice.q<HTMLButtonElement>(".invite").disabled = true;
    const invitation = await invite(alice.device);
    alice.q(".code").textContent = invitation.shortCode;
    show(alice.q(".code-hint"));
    stepDone("invite");
    try {
      await runGenerator(alice.device, invitation, compareOn(alice));
      ledgerReady(alice, names);
    } catch (err) {
      alice.q(".pair-note").textContent = String((err as Error).message);
    }
  };
  bob.q(".join").onclick = async () => {
    const code = bob.q<HTMLInputElement>(".code-input").value.trim();
    bob.q<HTMLButtonElement>(".join").disabled = true;
    bob.q(".pair-note").textContent = "Checking the code…";
    stepDone("join");
    try {
      await runJoiner(bob.device, code, compareOn(bob));
      stepDone("compare");
      ledgerReady(bob, names);
    } catch (err) {
      bob.q(".pair-note").textContent = String((err as Error).message);
      bob.q<HTMLButtonElement>(".join").disabled = false;
    }
  };
}

void main();
