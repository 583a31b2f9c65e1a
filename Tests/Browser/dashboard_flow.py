#!/usr/bin/python3
"""Drives the dashboard in a real headless Chromium (Debian's chromium, chromium-driver, python3-selenium).

Run by Tests/EndToEndTests/DashboardBrowserTests.swift, which starts a controller and an agent and passes:
  FK_SETUP_LINK  the one-time password link `operator add` printed
  FK_OPERATOR    the operator's name;  FK_PASSWORD the password to set
  FK_AGENT_ID    the enrolled agent;   FK_SCREENSHOTS a directory for the screenshots
Prints one line per step; exits 0 when the whole flow worked, 1 with the reason otherwise.
"""
import os
import sys
import tempfile
import time
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

setup_link = os.environ["FK_SETUP_LINK"]
operator = os.environ["FK_OPERATOR"]
password = os.environ["FK_PASSWORD"]
agent_id = os.environ["FK_AGENT_ID"]
shots = os.environ["FK_SCREENSHOTS"]
base = "{0.scheme}://{0.netloc}".format(urlsplit(setup_link))


def step(message):
    print("step: " + message, flush=True)


def fail(message):
    print("FAILED: " + message, flush=True)
    try:
        driver.save_screenshot(os.path.join(shots, "failure.png"))
        print("page at failure: " + driver.current_url + "\n" + driver.find_element(By.TAG_NAME, "body").text[:2000], flush=True)
    except Exception:
        pass
    sys.exit(1)


def shot(name):
    driver.save_screenshot(os.path.join(shots, name + ".png"))


def check_console():
    """Nothing may be blocked by the Content-Security-Policy, and no script may fail."""
    for entry in driver.get_log("browser"):
        text = entry.get("message", "")
        # The refused sign-in answers 401 on purpose; anything else that is severe is a fault.
        if "Content Security Policy" in text or (entry.get("level") == "SEVERE" and "status of 401" not in text):
            fail("browser console: " + text)


options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1100",
                 "--ignore-certificate-errors", "--user-data-dir=" + tempfile.mkdtemp(prefix="fk-chromium-")]:
    options.add_argument(argument)
options.accept_insecure_certs = True
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
driver.set_page_load_timeout(30)


class PageWait(WebDriverWait):
    """Waits as WebDriverWait does, and also while the page is being replaced. A condition can find an element just
    before a click's navigation swaps the document out; Chromium then answers the next call on it with "Node with
    given id does not belong to the document", an unknown error rather than a stale element, which WebDriverWait
    would not retry. Any other error still ends the wait at once."""

    def until(self, method, message=""):
        def tolerant(driver):
            try:
                return method(driver)
            except WebDriverException as error:
                if "does not belong to the document" in (error.msg or ""):
                    return False
                raise
        return super().until(tolerant, message)


wait = PageWait(driver, 20)

try:
    step("set the password through the one-time link")
    driver.get(setup_link)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "confirmation").send_keys(password)
    shot("1-set-password")
    driver.find_element(By.ID, "set-password").click()
    wait.until(expected_conditions.url_contains("/login?m=password-set"))

    step("a wrong password is refused")
    driver.find_element(By.ID, "name").send_keys(operator)
    driver.find_element(By.ID, "password").send_keys("not the password at all")
    driver.find_element(By.ID, "sign-in").click()
    wait.until(expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "main"), "Wrong operator name or password"))

    step("sign in")
    driver.find_element(By.ID, "name").send_keys(operator)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "sign-in").click()
    wait.until(expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Fleet overview"))
    cookies = {cookie["name"]: cookie for cookie in driver.get_cookies()}
    session = cookies.get("__Host-fk-session")
    if not session or not session.get("httpOnly") or not session.get("secure") or session.get("sameSite") != "Strict":
        fail("session cookie is not HttpOnly, Secure and SameSite=Strict: %r" % (session,))

    step("the overview lists the agent online")
    link = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, 'table#agents a[href="/agent?id=%s"]' % agent_id)))
    row = link.find_element(By.XPATH, "./ancestor::tr")
    if "online" not in row.text:
        fail("agent row does not say online: " + row.text)
    shot("2-overview")
    check_console()

    step("open the agent page")
    # Scrolled into view and clickable first: on a loaded machine the page may still be laying out.
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", link)
    wait.until(expected_conditions.element_to_be_clickable(link)).click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "action-backup")))
    shot("3-agent")

    step("back up now, with the confirmation")
    driver.find_element(By.ID, "action-backup").click()
    wait.until(expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Confirm: Back up now"))
    shot("4-confirm")
    driver.find_element(By.ID, "confirm").click()
    wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "tr[data-job]")))
    job = driver.find_element(By.CSS_SELECTOR, "tr[data-job]")
    job_id = job.get_attribute("data-job")
    if "backup" not in job.text:
        fail("newest job is not the backup: " + job.text)

    step("job %s: watch the page (no reload) until it says succeeded" % job_id)
    state_selector = 'tr[data-job="%s"] .state' % job_id
    seen = set()
    deadline = time.time() + 60
    while time.time() < deadline:
        state = driver.find_element(By.CSS_SELECTOR, state_selector).text
        seen.add(state)
        if state in ("failed", "expired", "cancelled"):
            fail("job %s ended %s: %s" % (job_id, state, driver.find_element(By.CSS_SELECTOR, 'tr[data-job="%s"]' % job_id).text))
        if state == "succeeded":
            break
        time.sleep(0.2)
    else:
        fail("job %s did not reach succeeded on the page in 60 s (states seen: %s)" % (job_id, sorted(seen)))
    progress = driver.find_element(By.CSS_SELECTOR, 'tr[data-job="%s"] progress' % job_id).get_attribute("value")
    if progress != "100":
        fail("progress bar of the succeeded job is at %s, not 100" % progress)
    print("states seen on the page: " + ", ".join(sorted(seen)), flush=True)
    shot("5-agent-succeeded")
    check_console()

    step("the jobs page lists it in the history")
    driver.find_element(By.LINK_TEXT, "Jobs").click()
    wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-job="%s"][data-done="1"]' % job_id)))
    shot("6-jobs")

    step("the agent page charts the repository size the backup reported")
    driver.get(base + "/agent?id=" + agent_id)
    bars = driver.find_elements(By.XPATH, "//figure[figcaption[contains(., 'Repository size')]]//*[local-name()='rect' and @class='bar']")
    if not bars:
        fail("no bar in the repository-size chart after a successful backup")
    shot("6b-agent-charts")

    step("the alerts page")
    driver.find_element(By.LINK_TEXT, "Alerts").click()
    wait.until(expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Alerts"))
    if "Notification channels" not in driver.find_element(By.TAG_NAME, "main").text:
        fail("an administrator's alerts page lists the notification channels")
    shot("6c-alerts")
    check_console()

    step("the privacy page: aggregates, customers and the audit log with this session's reads")
    driver.find_element(By.LINK_TEXT, "Privacy").click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "aggregate-os")))
    driver.find_element(By.ID, "verify-audit").click()
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "audit-chain"), "Audit chain verified"))
    if "operator" not in driver.find_element(By.ID, "audit").text:
        fail("the audit log does not show the operator's reads of the agent page")
    shot("6d-privacy")
    check_console()

    step("sign out")
    driver.find_element(By.ID, "logout").click()
    wait.until(expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "main"), "You are signed out"))
    driver.get(base + "/")
    wait.until(expected_conditions.url_contains("/login"))
    shot("7-signed-out")
    check_console()
    print("OK job=" + job_id, flush=True)
finally:
    driver.quit()
